"""CUDA-graph training (`TrainConfig(cuda_graph=True)` / `fastat train --cuda-graph`) on the GPU: every method's
whole step (attack, loss, backward, SGD, EMA, epoch sums) is captured once per epoch and replayed, and ends close to
the eager run of the same configuration."""

from __future__ import annotations

import math

import pytest
import torch

from fastat.train import TrainConfig, Trainer

from ._dryrun import needs_gpu

pytestmark = [pytest.mark.cuda, needs_gpu]  # every test captures CUDA graphs

SMALL = dict(dataset="fashion-mnist", eps=0.2, subset=1024, batch_size=128, device="cuda", model="small-cnn",
             precision="bf16", eval_n=128, eval_steps=2, co_batch=64, co_steps=1, progress=False, plot=False,
             lr_max=0.05, checkpoint=False, on_diverge="log")
METHODS = ["fgsm", "fgsm_rs", "n_fgsm", "zerograd", "multigrad", "atas", "pgd", "apart", "gradalign"]


def _fit(method: str, graph: bool, **kw) -> Trainer:
    hp = kw.pop("method_kwargs", {"gradalign": {"lam": 0.2}}.get(method, {}))
    t = Trainer(TrainConfig(method=method, epochs=2, cuda_graph=graph, method_kwargs=hp, **{**SMALL, **kw}))
    t.fit()
    return t


@pytest.mark.parametrize("method", METHODS)
def test_every_method_captures_and_replays(method):
    t = _fit(method, True)
    assert t.graph_mode_failed is None, t.graph_mode_failed
    # 8 batches per epoch: 3 warm-up steps, then epoch 1 captures on batch 4 and replays 5; epoch 2 re-captures
    assert t.graph_replays == (8 - 3) + 8 and t.eager_steps == 3
    last = t.history[-1]
    assert math.isfinite(last["train_loss"]) and last["graph_replays"] == t.graph_replays
    eager = _fit(method, False)
    assert abs(last["train_adv_acc"] - eager.history[-1]["train_adv_acc"]) < 0.15


def test_lr_follows_the_schedule_inside_the_graph():
    t = _fit("fgsm_rs", True, lr_schedule="cyclic")
    lr = t.optimizer.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.device.type == "cuda"
    assert float(lr) == pytest.approx(t.scheduler.get_last_lr()[0]) and float(lr) < 1e-3  # cyclic ends at ~0


def test_capture_survives_a_rollback(tmp_path, monkeypatch):
    from fastat.train import monitor

    calls = iter([(0.5, False), (0.1, True), (0.5, False)])
    monkeypatch.setattr(monitor.COMonitor, "check", lambda self, model, precision="fp32", **kw: next(calls))
    t = _fit("zerograd", True, out=str(tmp_path), on_co="rollback", checkpoint=True, method_kwargs={"q": 0.35})
    assert t.graph_mode_failed is None and t.rollbacks == 1 and t.method.q == pytest.approx(0.45)


def test_last_partial_batch_runs_eagerly():
    t = _fit("fgsm_rs", True, subset=1000)  # 7 full batches + one of 104 per epoch
    assert t.graph_mode_failed is None and t.eager_steps == 3 + 2


def test_a_stat_first_seen_inside_the_capture_is_still_summed(monkeypatch):
    """A method whose `stats()` gains a key after the eager warm-up: the capture allocates the new epoch sum outside
    the graph and captures again, so the key is summed over every replayed step like the others."""
    from fastat.methods.fgsm import FGSMRS

    stats = FGSMRS.stats
    calls = {"n": 0}

    def late_stats(self):
        calls["n"] += 1
        extra = {"late": torch.ones((), device="cuda")} if calls["n"] > 3 else {}
        return {**stats(self), **extra}

    monkeypatch.setattr(FGSMRS, "stats", late_stats)
    t = _fit("fgsm_rs", True)
    assert t.graph_mode_failed is None
    # summed from the first capture on: epoch 1 replays 8 - 3 steps of 128 of its 1024 examples, epoch 2 all 8
    assert [h["method_late"] for h in t.history] == pytest.approx([(8 - 3) * 128 / 1024, 1.0])
