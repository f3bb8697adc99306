"""The recipe's defaults (`fastat.train.recipes`: model, learning rate, ε warm-up) and the ε warm-up itself
(`Method.scaled_budget` inside the trainer's steps)."""

from __future__ import annotations

import json

import pytest
import torch

from fastat.methods import METHODS, build_method
from fastat.train import TrainConfig, Trainer, fit
from fastat.train.config import ConfigError
from fastat.train.recipes import default_eps_warmup, default_lr, default_model

TINY = dict(dataset="fashion-mnist", eps=0.2, subset=128, batch_size=32, device="cpu", model="small-cnn",
            model_kwargs={"width": 8, "hidden": 32}, eval_n=32, eval_steps=2, co_batch=16, co_steps=1,
            progress=False, plot=False, lr_max=0.05, on_diverge="log")


def test_default_lr_follows_the_model_and_scales_down_below_batch_128():
    assert default_lr("preact18", 128) == 0.2 and default_lr("preact18", 512) == 0.2  # WONG's peak, kept above 128
    assert default_lr("preact18", 64) == pytest.approx(0.1) and default_lr("wrn28-10", 32) == pytest.approx(0.05)
    assert default_lr("small-cnn", 128) < default_lr("preact18", 128)
    assert default_model("cuda") == "preact18" and default_model("cpu") == "small-cnn"
    assert default_eps_warmup("svhn") == 5 and default_eps_warmup("svhn", "preact18") == 5
    assert default_eps_warmup("cifar10", "small-cnn") == 2 and default_eps_warmup("cifar10", "preact18") == 0
    assert default_eps_warmup("fashion-mnist", "small-cnn") == 0


@pytest.mark.parametrize("dataset, eps", [("fashion-mnist", 0.1), ("mnist", 0.3), ("cifar10", 8 / 255),
                                          ("CIFAR-100", 8 / 255), ("svhn", 8 / 255), ("imagefolder", 8 / 255)])
def test_the_default_eps_is_the_data_sets(dataset, eps):
    """No single ε for every data set: 0.2 (the old default) is 51/255 on CIFAR, where it left runs at chance."""
    cfg = TrainConfig(method="fgsm_rs", dataset=dataset)
    cfg.validate()
    assert cfg.eps == pytest.approx(eps)
    given = TrainConfig(method="fgsm_rs", dataset=dataset, eps="4/255")
    given.validate()
    assert given.eps == pytest.approx(4 / 255)


def test_the_resolved_recipe_is_recorded_and_an_explicit_lr_wins(tmp_path):
    t = Trainer(TrainConfig(method="fgsm", epochs=1, out=str(tmp_path), **{**TINY, "lr_max": None}))
    assert t.lr_max == default_lr("small-cnn", 32) and t.scheduler.base_lrs == [t.lr_max]
    config = t.write_manifest()["config"]
    assert config["lr_max"] == t.lr_max and config["eps_warmup"] == 0.0
    assert json.loads((tmp_path / "run.json").read_text())["config"]["lr_max"] == t.lr_max
    assert Trainer(TrainConfig(method="fgsm", epochs=1, **TINY)).lr_max == 0.05


@pytest.mark.parametrize("value", [-1.0, 3.5, float("nan"), "2"])
def test_eps_warmup_is_checked(value):
    with pytest.raises(ConfigError, match="eps_warmup"):
        TrainConfig(method="fgsm", epochs=3, eps_warmup=value).validate()
    with pytest.raises(ConfigError, match="lr_max"):
        TrainConfig(method="fgsm", lr_max=float("inf")).validate()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_scaled_budget_scales_eps_and_the_pixel_hyper_parameters_and_restores_them(name):
    method = build_method(name, eps=0.05)
    before = dict(method.hparams)
    with method.scaled_budget(0.25):
        assert method.eps == pytest.approx(0.0125)
        for key in method.pixel_hparams:
            if key in before and isinstance(before[key], float):
                assert getattr(method, key) == pytest.approx(0.25 * before[key])
    assert method.hparams == before
    with method.scaled_budget(1.0):
        assert method.hparams == before
    with pytest.raises(ValueError, match="scale"), method.scaled_budget(0.0):
        pass
    assert method.hparams == before


def test_a_scaled_attack_stays_in_the_scaled_ball():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    for name in ("fgsm", "fgsm_rs", "zerograd", "multigrad", "pgd"):
        method = build_method(name, eps=0.2)
        with method.scaled_budget(0.3):
            x_adv = method.perturb(model, x, y)
        assert float((x_adv - x).abs().max()) <= 0.06 + 1e-6, name


def test_eps_warmup_ramps_the_perturbation_over_its_epochs(tmp_path):
    """With eps_warmup=2 of 3 epochs the mean |δ|/ε grows through epochs 1-2 and the ramp ends at 1 at the end of
    epoch 2 (NF's per-iteration linear ramp); without it the first epoch already perturbs at the full ε."""
    cfg = {**TINY, "subset": 256}
    ramped = fit(method="fgsm", epochs=3, eps_warmup=2, **cfg)
    rows = [r for r in ramped.history if r.get("event") == "epoch"]
    steps = len(ramped.loader)
    assert ramped.warmup_steps == 2 * steps and [r["eps_scale"] for r in rows] == [0.5, 1.0, 1.0]
    assert ramped.budget_scale(0) == pytest.approx(1 / (2 * steps)) and ramped.budget_scale(2 * steps) == 1.0
    pert = [r["pert_abs_mean_over_eps"] for r in rows]
    assert pert[0] < 0.5 * pert[2] and pert[1] < pert[2]
    flat = fit(method="fgsm", epochs=1, **cfg)
    assert "eps_scale" not in flat.history[0] and flat.history[0]["pert_abs_mean_over_eps"] > 2 * pert[0]


def test_every_field_has_a_flag_and_the_cli_builds_the_api_config():
    """TrainConfig is declared once: `fastat train` has a flag for every field, and the same values given on the
    command line or to TrainConfig(...) validate to the same configuration (device and precision resolved once)."""
    import argparse
    import dataclasses

    from fastat.train.cli import add_train_arguments, config_from_args

    parser = add_train_arguments(argparse.ArgumentParser())
    dests = {a.dest for a in parser._actions}
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= dests
    argv = ["--method", "zerograd", "--dataset", "fashion-mnist", "--eps", "8/255", "--epochs", "3", "--subset", "256",
            "--batch-size", "32", "--model", "small-cnn", "--model-kwarg", "width=8", "--milestones", "0.3,0.6",
            "--q", "0.5", "--hp", "zero_iters=2", "--no-plot", "--no-checkpoint", "--eval-restarts", "2",
            "--max-rollbacks", "1", "--q-step", "0.2", "--alpha-factor", "0.5", "--compile", "--drop-last"]
    cli = config_from_args(parser.parse_args(argv))
    api = TrainConfig(method="zerograd", dataset="fashion-mnist", eps="8/255", epochs=3, subset=256, batch_size=32,
                      model="small-cnn", model_kwargs={"width": 8}, milestones=(0.3, 0.6),
                      method_kwargs={"q": 0.5, "zero_iters": 2}, plot=False, checkpoint=False, eval_restarts=2,
                      max_rollbacks=1, q_step=0.2, alpha_factor=0.5, compile="default", drop_last=True)
    cli.validate()
    api.validate()
    assert cli.to_dict() == api.to_dict()
    assert api.precision == ("bf16" if api.resolved_device() == "cuda" else "fp32")
    defaults = config_from_args(parser.parse_args(["--method", "fgsm"]))
    plain = TrainConfig(method="fgsm")
    defaults.validate()
    plain.validate()
    assert defaults.to_dict() == plain.to_dict()


def test_a_resume_refused_over_a_changed_default_names_it(tmp_path):
    """A run written when ε defaulted to 0.2 (now the data set's 0.1 on Fashion-MNIST) is refused with the hint."""
    cfg = {k: v for k, v in TINY.items() if k != "eps"}
    fit(method="fgsm", epochs=1, out=str(tmp_path), eps=0.2, **cfg)
    t = Trainer(TrainConfig(method="fgsm", epochs=1, out=str(tmp_path), **cfg))
    with pytest.raises(ConfigError, match=r"eps=0\.2 \(now eps=0\.1\).*the default of eps changed from 0\.2"):
        t.resume()


def test_the_dead_model_line_names_a_method_knob_where_it_has_one():
    """FGSM-PGI's consistency weight kept the atlas's runs at chance at ε = 0.25 (λ = 0 trained): its line says so;
    a method without such a knob adds nothing."""
    from fastat.train.recipes import divergence_hint

    kw = dict(epoch=2, reason="clean accuracy 10.4% is at chance level", model="small-cnn", batch_size=64,
              lr_max=0.05, eps=0.25, epochs=10, eps_warmup=0.0)
    pgi = build_method("fgsm_pgi", eps=0.25)
    line = divergence_hint(**kw, method_hint=pgi.divergence_hint())
    assert "or the consistency weight λ = 10 (--hp lam=1)" in line and "--lr-max 0.025" in line
    assert build_method("fgsm_pgi", eps=0.25, lam=0.0).divergence_hint() is None
    assert build_method("fgsm_rs", eps=0.25).divergence_hint() is None
    assert divergence_hint(**kw) == divergence_hint(**kw, method_hint=None) and "λ" not in divergence_hint(**kw)
