"""The PertAlign CO check and the training loss's input gradient the trainer hands over (SORA, PertAlign), and the
frontier methods (sora, nuat) through the trainer and the CLI."""

from __future__ import annotations

import math

import pytest
import torch

from fastat.cli import main
from fastat.train import ConfigError, TrainConfig, Trainer, fit
from fastat.train.monitor import PertAlignDetector

TINY = dict(dataset="fashion-mnist", eps=0.2, subset=128, batch_size=64, device="cpu", model="small-cnn",
            model_kwargs={"width": 8, "hidden": 32}, eval_n=32, eval_steps=2, co_batch=16, co_steps=1,
            progress=False, plot=False, lr_max=0.05, on_diverge="log")


def test_pertalign_detector_averages_each_epoch_and_flags_a_fall_below_half_its_best():
    det = PertAlignDetector(ratio=0.5)
    g = torch.randn(4, 1, 3, 3)
    other = torch.randn(4, 1, 3, 3)

    def epoch(pairs):
        for a, b in pairs:
            det.observe(a, b)
        return det.after_epoch(None, "fp32", None, False)

    assert epoch([(g, g), (g, g)]) == (pytest.approx(1.0), False)  # aligned: cos 1
    mixed = float(torch.nn.functional.cosine_similarity(g.flatten(1), other.flatten(1)).mean())
    value, co = epoch([(g, g), (g, other)])
    assert value == pytest.approx((1 + mixed) / 2) and co == ((1 + mixed) / 2 < 0.5)
    value, co = epoch([(g, g), (g, g), (g, -g)])
    assert value == pytest.approx(1 / 3) and co  # below half the best (1)
    value, co = epoch([(g, -g)])
    assert value == pytest.approx(-1.0) and co
    assert det.best == pytest.approx(1.0) and len(det.history) == 4
    det.after_rollback()  # the restored epoch's value becomes the reference (here the collapsed one, as a check)
    assert det.best == pytest.approx(-1.0)
    value, co = epoch([(torch.zeros_like(g), g)])  # zero gradients: nothing to average
    assert math.isnan(value) and not co
    state = det.state_dict()
    fresh = PertAlignDetector()
    fresh.load_state_dict(state)
    assert fresh.best == det.best and fresh.history[:4] == det.history[:4]


def test_the_trainer_hands_over_the_training_loss_input_gradient(monkeypatch):
    """What `observe` receives is ∇_{x_adv} CE_mean(f(x_adv), y) of the step's own training loss, and the attack's
    gradient of the same step."""
    from fastat.methods import FGSMRS

    seen, want = [], []
    real = FGSMRS.train_loss

    def spy(self, model, x, y, x_adv, label_smoothing=0.0):
        loss, logits = real(self, model, x, y, x_adv, label_smoothing)
        want.append((torch.autograd.grad(loss, x_adv, retain_graph=True)[0], self.attack_grad))
        return loss, logits

    monkeypatch.setattr(FGSMRS, "train_loss", spy)
    monkeypatch.setattr(PertAlignDetector, "observe", lambda self, g1, g2: seen.append((g1, g2)))
    t = Trainer(TrainConfig(method="fgsm_rs", epochs=1, co_check="pertalign", **TINY))
    t.fit()
    assert len(seen) == len(want) == 2
    for (g1, g2), (w2, w1) in zip(seen, want):
        assert g1 is w1
        torch.testing.assert_close(g2, w2)


def test_pertalign_is_refused_for_methods_without_one_attack_gradient():
    for method in ("multigrad", "pgd", "apart"):
        with pytest.raises(ConfigError, match="'pertalign' needs a single-step method"):
            TrainConfig(method=method, co_check="pertalign").validate()
    TrainConfig(method="n_fgsm", co_check="pertalign").validate()
    with pytest.raises(ConfigError, match="cuda_graph' does not combine with nuat"):
        TrainConfig(method="nuat", cuda_graph=True).validate()


def test_sora_trains_resumes_and_keeps_its_rho(tmp_path):
    t = fit(method="sora", epochs=2, out=str(tmp_path), co_check="pertalign", **TINY)
    row = t.history[-1]
    assert -1 <= row["pertalign"] <= 1 and 0 < row["method_alpha_over_eps"] <= 2 and row["method_rho"] < 0.99
    resumed = Trainer(TrainConfig(method="sora", epochs=2, out=str(tmp_path), co_check="pertalign", **TINY))
    assert resumed.resume() and resumed.epoch == 2
    assert torch.equal(resumed.method.rho, t.method.rho)
    assert resumed.monitor.history == t.monitor.history


@pytest.mark.parametrize("method", ["sora", "nuat", "fgsm_pgi"])
def test_cli_trains_the_frontier_methods_with_the_pertalign_check(tmp_path, capsys, method):
    args = ["train", "--method", method, "--co-check", "pertalign", "--epochs", "1", "--subset", "128",
            "--batch-size", "64", "--device", "cpu", "--model", "small-cnn", "--eval-n", "32", "--eval-steps", "2",
            "--no-progress", "--no-plot", "--on-diverge", "log", "--out", str(tmp_path / method)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "co-check" in out
    rows = [line for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines() if '"epoch"' in line]
    assert rows and '"pertalign"' in rows[0]


def test_nuat_training_loss_is_the_clean_one(monkeypatch):
    """Through the trainer NuAT's step trains on its own loss (clean CE + the regulariser), not CE(f(x_adv))."""
    from fastat.methods import NuAT

    calls = []
    real = NuAT.train_loss
    monkeypatch.setattr(NuAT, "train_loss", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    fit(method="nuat", epochs=1, **TINY)
    assert len(calls) == 2  # both batches of the epoch


def test_each_co_check_names_its_number_in_the_co_messages():
    """The CO lines name the check's number by the detector's own label, so a new detector needs no change there."""
    from fastat.train.co_response import check_text
    from fastat.train.monitor import CO_CHECKS

    assert {name: check_text(cls, 0.25) for name, cls in CO_CHECKS.items()} == {
        "test": "check PGD acc 0.250", "wong": "check PGD acc 0.250", "pertalign": "PertAlign 0.250"}
