"""``compile``: the attacks and the training forward/backward run through ``torch.compile(model)``; GradAlign's double
backprop, the evaluations and the checkpoints use the eager model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastat.cli import main
from fastat.train import ConfigError, TrainConfig, Trainer, fit

TINY = dict(dataset="fashion-mnist", eps=0.2, subset=128, batch_size=64, device="cpu", model="small-cnn",
            model_kwargs={"width": 8, "hidden": 32}, eval_n=32, eval_steps=2, co_batch=16, co_steps=1,
            progress=False, plot=False, lr_max=0.05,
            on_diverge="log")  # tiny models sit at chance: they test other things (see test_divergence_*)


class _Compiled(nn.Module):
    """Stands in for torch.compile's wrapper: records the calls, runs the module."""

    def __init__(self, module: nn.Module, mode: str) -> None:
        super().__init__()
        self.inner, self.mode, self.calls = module, mode, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_config_checks():
    with pytest.raises(ConfigError, match="'compile' must be one of .*reduce-overhead"):
        TrainConfig(method="fgsm", compile="reduce-overhead").validate()
    with pytest.raises(ConfigError, match="'compile' cannot be combined with 'cuda_graph'"):
        TrainConfig(method="fgsm", compile="default", cuda_graph=True, device=None).validate()


def test_cli_flag_default_mode(capsys):
    base = ["train", "--method", "fgsm", "--device", "cpu", "--subset", "64", "--batch-size", "64"]
    assert main(base + ["--compile", "fast"]) == 2
    assert "'compile' must be one of" in capsys.readouterr().err
    from fastat.train.cli import config_from_args
    from fastat.cli import build_parser

    assert config_from_args(build_parser().parse_args(base + ["--compile"])).compile == "default"
    assert config_from_args(build_parser().parse_args(base)).compile is None


def test_wiring(monkeypatch):
    """The attack and the training forward get the compiled module; GradAlign's regulariser, the evaluation and the
    checkpoint get the eager one."""
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: _Compiled(module, mode))
    t = Trainer(TrainConfig(method="gradalign", epochs=1, compile="max-autotune", method_kwargs={"lam": 0.5}, **TINY))
    assert isinstance(t.attack_model, _Compiled) and t.attack_model.mode == "max-autotune"
    assert t.train_model is t.attack_model and t.attack_model.inner is t.model
    seen = {}
    perturb, extra = t.method.perturb, t.method.extra_loss
    t.method.perturb = lambda model, *a: seen.setdefault("perturb", model) and perturb(model, *a)
    t.method.extra_loss = lambda model, *a: seen.setdefault("extra", model) is not None and extra(model, *a)
    t.fit()
    assert seen["perturb"] is t.attack_model and seen["extra"] is t.model
    assert t.attack_model.calls >= 2 * 2  # attack + training forward on each of the 2 batches
    assert not any(k.startswith("inner.") for k in t.model.state_dict())


def test_apart_noise_hooks_warn(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: _Compiled(module, mode))
    kw = {**TINY, "model": "preact18", "model_kwargs": {"width": 4}}
    with pytest.warns(UserWarning, match="APART's layer-wise noise"):
        Trainer(TrainConfig(method="apart", epochs=1, compile="default", **kw))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(TrainConfig(method="apart", epochs=1, compile="default", method_kwargs={"noise_modules": []}, **kw))


def test_compiled_training_matches_eager():
    """Real torch.compile (inductor on the CPU): same draws, same steps, weights within float noise of eager. ATAS:
    eval-mode attack without parameter gradients, train-mode forward with them (two graphs), per-example state."""
    pytest.importorskip("torch._inductor")
    torch.manual_seed(0)
    eager = fit(method="atas", epochs=1, **TINY)
    torch.manual_seed(0)
    compiled = fit(method="atas", epochs=1, compile="default", **TINY)
    assert type(compiled.attack_model).__name__ == "OptimizedModule"
    for (k, a), b in zip(eager.model.state_dict().items(), compiled.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=k)
    for b, a in zip(compiled.method.example_buffers(), eager.method.example_buffers()):  # ATAS δ and v
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
