"""Trainer tests on tiny CPU runs (small-cnn, a few hundred Fashion-MNIST images)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from fastat._malloc import tune_for
from fastat.cli import main
from fastat.train import ConfigError, TrainConfig, Trainer, fit, lr_factor, parse_number

TINY = dict(dataset="fashion-mnist", eps=0.2, subset=128, batch_size=64, device="cpu", model="small-cnn",
            model_kwargs={"width": 8, "hidden": 32}, eval_n=32, eval_steps=2, co_batch=16, co_steps=1,
            progress=False, plot=False, lr_max=0.05,
            on_diverge="log")  # tiny models sit at chance: they test other things (see test_divergence_*)


def test_parse_number():
    assert parse_number("8/255") == pytest.approx(8 / 255)
    assert parse_number("0.2") == 0.2
    with pytest.raises(ConfigError, match="eps"):
        parse_number("abc", "eps")


@pytest.mark.parametrize("schedule", ["cyclic", "piecewise", "multistep", "constant"])
def test_schedules(schedule):
    f = lr_factor(schedule, 100, peak=0.4)
    vals = [f(s) for s in range(100)]
    assert max(vals) == pytest.approx(1.0)
    if schedule == "cyclic":
        assert vals.index(max(vals)) == 39 and vals[-1] == pytest.approx(0.0)
    if schedule in ("piecewise", "multistep"):
        assert vals[0] == 1 and vals[60] == pytest.approx(0.1) and vals[99] == pytest.approx(0.01)


def test_fit_writes_metrics(tmp_path):
    t = fit(method="fgsm_rs", epochs=1, out=str(tmp_path), ema=0.9, label_smoothing=0.1, **{**TINY, "plot": True})
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and {"clean_acc", "pgd_acc", "ema_pgd_acc", "train_loss", "co_pgd_acc"} <= set(rows[0])
    assert (tmp_path / "metrics.csv").exists() and (tmp_path / "curves.png").exists()
    assert (tmp_path / "checkpoint.pt").exists()
    assert t.epoch == 1


def test_best_checkpoint_follows_the_highest_pgd_accuracy(tmp_path, monkeypatch):
    from fastat.checkpoint import load_checkpoint

    accs = iter([0.3, 0.5, 0.4])
    monkeypatch.setattr(Trainer, "evaluate", lambda self, model=None: {"clean_acc": 0.9, "pgd_acc": next(accs),
                                                                       "eval_seconds": 0.0})
    fit(method="fgsm_rs", epochs=3, out=str(tmp_path), **TINY)
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 3


def _weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in t.model.state_dict().items()}


# ATAS: per-example state + global RNG, adaptive steps from epoch 1 and a δ reset at epoch 2 of 3; its state may live
# in host memory before the kill and on the device after
@pytest.mark.parametrize("first_hp", [{}, {"state_device": "cpu"}], ids=["device-state", "host-state-then-device"])
def test_resume_bit_identical(tmp_path, first_hp):
    hp = {"warmup_epochs": 0, "reset_every": 2}
    straight = fit(method="atas", epochs=3, out=str(tmp_path / "a"), method_kwargs=hp, **TINY)
    # a run killed in epoch 3 (its checkpoint after epoch 2 is all that is left), then a fresh Trainer resumes it
    first = Trainer(TrainConfig(method="atas", epochs=3, out=str(tmp_path / "b"), method_kwargs={**hp, **first_hp},
                                **TINY))
    real_epoch = first.train_epoch

    def killed_in_epoch_3(epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return real_epoch(epoch)

    first.train_epoch = killed_in_epoch_3
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    resumed = Trainer(TrainConfig(method="atas", epochs=3, out=str(tmp_path / "b"), method_kwargs=hp, **TINY))
    assert resumed.resume() and resumed.epoch == 2 and resumed.method.state_device is None
    assert resumed.method.v_buf.any()  # the adaptive phase ran (v is only updated after warm-up)
    resumed.fit()
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_different_config(tmp_path, capsys):
    fit(method="fgsm_rs", epochs=1, out=str(tmp_path), **TINY)
    t = Trainer(TrainConfig(method="fgsm_rs", epochs=1, out=str(tmp_path), **{**TINY, "eps": 0.3}))
    with pytest.raises(ConfigError, match=r"cannot resume .*eps=0\.2.*now eps=0\.3"):
        t.resume()
    assert t.epoch == 0  # nothing restored
    # output/evaluation settings may change
    t = Trainer(TrainConfig(method="fgsm_rs", epochs=1, out=str(tmp_path), **{**TINY, "eval_n": 16}))
    assert t.resume() and t.epoch == 1
    args = ["train", "--method", "fgsm_rs", "--eps", "0.25", "--subset", "128", "--batch-size", "64", "--epochs", "1",
            "--device", "cpu", "--model", "small-cnn", "--out", str(tmp_path), "--resume", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def alive(monkeypatch):
    """Tiny models sit at chance, which the trainer counts as dead (never CO): tests of the CO actions whose CO check
    is scripted declare the model alive."""
    monkeypatch.setattr(Trainer, "_divergence", lambda self, row: None)


@pytest.mark.usefixtures("alive")
def test_repeated_rollbacks_stop_at_max_rollbacks(tmp_path, monkeypatch):
    from fastat.train import monitor

    calls = iter([(0.5, False)] + [(0.1, True)] * 20)  # epoch 1 good, then collapse every time
    monkeypatch.setattr(monitor.COMonitor, "check", lambda self, model, precision="fp32", **kw: next(calls))
    t = fit(method="zerograd", epochs=2, out=str(tmp_path), on_co="rollback", max_rollbacks=3,
            method_kwargs={"q": 0.35}, **TINY)
    events = [r for r in t.history if r.get("event") == "rollback"]
    assert t.rollbacks == 3 and len(events) == 3
    assert [e["change"] for e in events] == ["q 0.35 -> 0.45", "q 0.45 -> 0.55", "q 0.55 -> 0.65"]
    assert t.epoch == 2 and t.history[-1]["co"]  # the 4th collapse is logged and training ends


def test_python_api_takes_fractions_like_the_cli():
    cfg = TrainConfig(method="fgsm_rs", eps="8/255", method_kwargs={"alpha": "10/255"})
    cfg.validate()
    assert cfg.eps == pytest.approx(8 / 255) and cfg.method_kwargs["alpha"] == pytest.approx(10 / 255)
    with pytest.raises(ConfigError, match="'eps'"):
        TrainConfig(eps="eight").validate()


def test_cuda_graph_needs_cuda_and_not_fp16():
    with pytest.raises(ConfigError, match="cuda_graph.*CUDA device"):
        Trainer(TrainConfig(method="fgsm_rs", epochs=1, cuda_graph=True, **TINY))
    with pytest.raises(ConfigError, match="cuda_graph.*bf16 or fp32"):
        TrainConfig(method="fgsm_rs", cuda_graph=True, precision="fp16").validate()


def test_step_schedule_updates_tensor_lr_in_place():
    from fastat.train import StepSchedule, lr_factor

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=torch.tensor(0.2))
    lr = opt.param_groups[0]["lr"]
    sched = StepSchedule(opt, lr_factor("cyclic", 10, peak=0.5))
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.2 * 1 / 5)
    for _ in range(4):
        sched.step()
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.2)
    state = sched.state_dict()
    sched.step()
    sched.load_state_dict(state)
    assert float(lr) == pytest.approx(0.2) and sched.get_last_lr() == [pytest.approx(0.2)]


@pytest.mark.usefixtures("alive")
def test_rollback_raises_q(tmp_path, monkeypatch):
    from fastat.train import monitor

    calls = iter([(0.5, False), (0.1, True), (0.5, False)])
    monkeypatch.setattr(monitor.COMonitor, "check", lambda self, model, precision="fp32", **kw: next(calls))
    t = fit(method="zerograd", epochs=2, out=str(tmp_path), on_co="rollback", method_kwargs={"q": 0.35}, **TINY)
    events = [r for r in t.history if r.get("event") == "rollback"]
    assert len(events) == 1 and "q 0.35 -> 0.45" in events[0]["change"]
    assert t.method.q == pytest.approx(0.45) and t.epoch == 2


@pytest.mark.usefixtures("alive")
def test_a_roll_back_that_cannot_strengthen_stops_the_run(tmp_path, monkeypatch, capsys):
    from fastat.train import monitor

    calls = iter([(0.5, False), (0.1, True)])
    monkeypatch.setattr(monitor.COMonitor, "check", lambda self, model, precision="fp32", **kw: next(calls))
    t = fit(method="zerograd", epochs=3, out=str(tmp_path), on_co="rollback", method_kwargs={"q": 0.95}, **TINY)
    assert t.history[-1]["event"] == "stop" and "would pass 1" in t.history[-1]["reason"]
    assert t.epoch == 1 and t.method.q == pytest.approx(0.95)  # back at the last good epoch, q as it was
    assert "rolled back to epoch 1 and stopped: ZeroGrad cannot be made more conservative" in capsys.readouterr().out


@pytest.mark.usefixtures("alive")
def test_on_co_stop(tmp_path, monkeypatch):
    from fastat.train import monitor

    calls = iter([(0.5, False), (0.0, True)])
    monkeypatch.setattr(monitor.COMonitor, "check", lambda self, model, precision="fp32", **kw: next(calls))
    t = fit(method="fgsm", epochs=3, out=str(tmp_path), on_co="stop", **TINY)
    assert t.epoch == 2 and t.history[-1]["event"] == "stop"


BASE = ["train", "--epochs", "1", "--subset", "128", "--co-batch", "16", "--co-steps", "1", "--batch-size", "64", "--device", "cpu", "--no-progress",
        "--eval-n", "32", "--eval-steps", "2"]


@pytest.mark.parametrize("extra, needle", [
    (["--method", "nope"], "unknown method"),
    (["--method", "fgsm", "--dataset", "imagenet42"], "unknown dataset"),
    (["--method", "fgsm", "--eps", "0"], "eps"),
    (["--method", "fgsm", "--eps=-8/255"], "eps"),
    (["--method", "fgsm", "--data-root", "/nonexistent/dir"], "does not exist"),
    (["--method", "zerograd", "--q", "1.5"], "'q'"),
    (["--method", "fgsm", "--batch-size", "100000", "--subset", "200"], "batch_size"),
    (["--method", "fgsm", "--hp", "bogus=1"], "bogus"),
    (["--method", "fgsm", "--on-co", "rollback"], "'out'"),
    (["--method", "fgsm", "--co-drop", "-1"], "co_drop"),
    (["--method", "zerograd", "--hp", "q=abc"], "'q'"),
    (["--method", "fgsm", "--subset", "10000000"], "subset"),
    (["--method", "fgsm", "--lr-peak", "5"], "lr_peak"),
    (["--method", "fgsm", "--milestones", "2,-1"], "milestones"),
    (["--method", "fgsm", "--eval-steps", "-3"], "eval_steps"),
    (["--method", "fgsm", "--co-steps", "0"], "co_steps"),
    (["--method", "fgsm", "--out", "/proc/fastat-cannot-write-here"], "'out'"),
])
def test_cli_bad_input(capsys, extra, needle):
    assert main(BASE + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("fastat train: error:")


def test_cli_train_and_plot(tmp_path, capsys):
    for m in ("fgsm_rs", "n_fgsm"):
        final = ["--final-eval", "pgd", "--final-n", "8"] if m == "n_fgsm" else []
        assert main(BASE + ["--method", m, "--eps", "51/255", "--model", "small-cnn",
                            "--out", str(tmp_path / m), *final]) == 0
    capsys.readouterr()
    png = tmp_path / "both.png"
    assert main(["plot", str(tmp_path / "fgsm_rs"), str(tmp_path / "n_fgsm"), "-o", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.exists() and "fgsm_rs" in out and "n_fgsm" in out
    final_rows = [line for line in out.splitlines() if "PGD-50-10, n=8" in line]
    assert len(final_rows) == 2 and all(line.startswith("n_fgsm") for line in final_rows)  # last and best
    assert main(["plot", str(tmp_path / "missing")]) == 2


def test_final_evaluation_reports_last_best_and_ema(tmp_path, monkeypatch, capsys):
    accs = iter([0.5, 0.3])  # epoch 1 is the best: best.pt != the last weights
    real = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self, model=None: {**real(self, model), "pgd_acc": next(accs)}
                        if model is None else real(self, model))
    t = fit(method="fgsm", epochs=2, out=str(tmp_path), ema=0.9, final_eval="pgd", final_n=24, **TINY)
    report = json.loads((tmp_path / "final_eval.json").read_text())
    assert report == t.final and report["n"] == 24 and report["steps"] == 50 and report["restarts"] == 10
    assert set(report["models"]) == {"last", "best", "ema"}
    assert report["models"]["best"]["epoch"] == 1 and report["models"]["last"]["epoch"] == 2
    for r in report["models"].values():
        assert 0 <= r["pgd_acc"] <= r["clean_acc"] + 1e-9 and r["pgd_any_acc"] <= r["pgd_acc"]
    assert "final evaluation: PGD-50-10" in capsys.readouterr().out
    # a finished run resumed with --final-eval only evaluates (final_eval is free to change on resume)
    (tmp_path / "final_eval.json").unlink()
    again = Trainer(TrainConfig(method="fgsm", epochs=2, out=str(tmp_path), ema=0.9, final_eval="pgd", final_n=8,
                                **TINY))
    assert again.resume() and again.epoch == 2
    again.fit()
    assert json.loads((tmp_path / "final_eval.json").read_text())["n"] == 8
    with pytest.raises(ConfigError, match="final_eval"):
        TrainConfig(final_eval="aa").validate()


def test_cli_values_include_json_lists():
    from fastat.train import parse_value

    assert parse_value("[]", "noise_modules") == [] and parse_value("[1, 2]") == [1, 2]
    assert parse_value("8/255") == pytest.approx(8 / 255) and parse_value("true") is True
    with pytest.raises(ConfigError, match="noise_modules"):
        parse_value("[1,", "noise_modules")
    cfg = {**TINY, "model": "preact18", "model_kwargs": {}}
    assert len(Trainer(TrainConfig(method="apart", epochs=1, **cfg)).method.parameters()) == 2 + 8  # 8 noise sites
    t = Trainer(TrainConfig(method="apart", epochs=1, method_kwargs={"noise_modules": parse_value("[]")}, **cfg))
    assert t.method.noise_modules == [] and len(t.method.parameters()) == 2  # no layer-wise α_b


def test_resume_sets_only_the_cuda_rng_states_of_present_devices(tmp_path, monkeypatch):
    # rank 0 of a torchrun job on 8 GPUs saves 8 CUDA generator states; a resume on a 1-GPU machine sets the first
    t = fit(method="fgsm", epochs=1, out=str(tmp_path), **TINY)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    ck["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8) for _ in range(8)]
    got = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", got.extend)
    from fastat.train import state

    state.restore(t, ck)
    assert len(got) == 1


def test_broken_torchrun_environment_is_one_config_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="RANK is not set; launch with torchrun"):
        Trainer(TrainConfig(method="fgsm", epochs=1, **TINY))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("FASTAT_DIST_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="FASTAT_DIST_TIMEOUT must be a number"):
        Trainer(TrainConfig(method="fgsm", epochs=1, **TINY))


def test_final_evaluation_with_autoattack(tmp_path, monkeypatch, capsys):
    import types

    import fastat.eval

    calls = []

    def fake_autoattack(model, x, y, eps, **kw):
        calls.append((x.shape[0], eps, kw["version"], kw["distributed"]))
        return types.SimpleNamespace(robust_acc=0.125, seconds=1.5)

    monkeypatch.setattr(fastat.eval, "autoattack_available", lambda: True)
    monkeypatch.setattr(fastat.eval, "run_autoattack", fake_autoattack)
    t = fit(method="fgsm", epochs=1, out=str(tmp_path), final_eval="pgd+aa", final_n=16, **TINY)
    assert calls == [(16, 0.2, "standard", False)]  # last == best here: attacked once
    assert t.final["models"]["last"]["autoattack_acc"] == 0.125 == t.final["models"]["best"]["autoattack_acc"]
    assert "AutoAttack" in capsys.readouterr().out


def test_run_manifest(tmp_path):
    fit(method="zerograd", epochs=1, out=str(tmp_path), method_kwargs={"q": 0.5}, **TINY)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"]["seed"] == 0 and run["config"]["model"] == "small-cnn" and run["hparams"]["q"] == 0.5
    assert run["train_examples"] == 128 and run["steps_per_epoch"] == 2 and run["eval_n"] == 32
    assert run["world_size"] == 1 and run["started_at_epoch"] == 0 and run["versions"]["torch"]
    assert run["method"].startswith("zerograd(") and run["parameters"] > 0
    assert run["malloc"] == tune_for("cpu")  # what this process's allocator does (`fastat._malloc`)


@pytest.mark.parametrize("attack_precision, want", [(None, True), ("bf16", True), ("fp32", False)])
def test_attack_precision_sets_the_attack_autocast_only(attack_precision, want):
    t = Trainer(TrainConfig(method="fgsm_rs", epochs=1, precision="bf16", attack_precision=attack_precision, **TINY))
    seen = {}
    perturb, forward = t.method.perturb, t.train_model.forward

    def spy_perturb(*args, **kw):
        seen["attack"] = torch.is_autocast_enabled("cpu")
        return perturb(*args, **kw)

    def spy_forward(*args, **kw):
        seen["train"] = torch.is_autocast_enabled("cpu")
        return forward(*args, **kw)

    t.method.perturb, t.train_model.forward = spy_perturb, spy_forward
    x, y, info = next(iter(t.loader))
    t._step(x, y, info)
    assert seen == {"attack": want, "train": True}
    with pytest.raises(ConfigError, match="attack_precision"):
        TrainConfig(method="fgsm_rs", attack_precision="fp8", **TINY).validate()


def test_recipe_options_reach_the_loader_and_optimizer():
    from fastat.train.cli import add_train_arguments, config_from_args

    p = add_train_arguments(argparse.ArgumentParser())
    cfg = config_from_args(p.parse_args(["--method", "apart", "--weight-decay", "2e-4", "--momentum", "0.8",
                                         "--pad-mode", "reflect", "--drop-last", "--subset", "100",
                                         "--batch-size", "64", "--device", "cpu"]))
    assert (cfg.weight_decay, cfg.momentum, cfg.pad_mode, cfg.drop_last) == (2e-4, 0.8, "reflect", True)
    t = Trainer(TrainConfig(method="fgsm_rs", epochs=1, pad_mode="reflect", drop_last=True,
                            **{**TINY, "subset": 100}))
    assert t.loader.pad_mode == "reflect" and len(t.loader) == 1  # 100 // 64, the partial batch dropped
    for bad, message in [({"pad_mode": "edge"}, "pad_mode"), ({"weight_decay": -1.0}, "weight_decay"),
                         ({"momentum": 1.0}, "momentum")]:
        with pytest.raises(ConfigError, match=message):
            TrainConfig(method="fgsm_rs", **{**TINY, **bad}).validate()


def test_cli_out_that_is_a_file_or_holds_a_run(tmp_path, capsys):
    a_file = tmp_path / "garbage.pt"
    a_file.write_text("x")
    assert main(BASE + ["--method", "fgsm", "--out", str(a_file)]) == 2
    assert "'out'" in capsys.readouterr().err
    run = ["--method", "fgsm", "--model", "small-cnn", "--out", str(tmp_path / "r")]
    assert main(BASE + run) == 0
    assert main(BASE + run) == 2  # a finished run is not overwritten by accident
    assert "already holds a run" in capsys.readouterr().err
    (tmp_path / "r" / "final_eval.json").write_text("{}")  # from the old run: must not outlive --overwrite
    assert main(BASE + run + ["--overwrite"]) == 0
    assert not (tmp_path / "r" / "final_eval.json").exists() and (tmp_path / "r" / "checkpoint.pt").exists()
    assert main(BASE + run + ["--overwrite", "--resume"]) == 2
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "r" / "last_good.pt").unlink()  # (with it, --resume falls back to it: tests/train/test_nothing_lost)
    capsys.readouterr()
    assert main(BASE + run + ["--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastat train: error:")


@pytest.mark.parametrize("lr_max, reason", [(1e12, "non-finite"), (1.0, "at chance level")])
def test_a_diverged_model_stops_with_the_flags_to_change_and_is_never_rolled_back(tmp_path, capsys, lr_max, reason):
    """(b) of the CO monitor: a model whose weights or loss go non-finite (lr 1e12), or which falls to a constant
    predictor (lr 1.0, finite), stops with one line naming the cause and the flags; even with --on-co rollback there
    is no roll-back, and the dead epoch is neither last_good.pt nor best.pt."""
    cfg = {**TINY, "on_diverge": "stop", "subset": 256, "eval_n": 64}
    t = fit(method="fgsm", epochs=6, out=str(tmp_path), on_co="rollback", lr_schedule="constant",
            **{**cfg, "lr_max": lr_max})
    epochs = [r for r in t.history if r.get("event") == "epoch"]
    assert t.history[-1]["event"] == "diverged" and reason in t.history[-1]["reason"] and t.epoch < 6
    assert epochs[-1]["diverged"] and not epochs[-1]["co"] and t.stopped == t.history[-1]["reason"]
    assert not any(r.get("event") == "rollback" for r in t.history) and t.rollbacks == 0
    out = [line for line in capsys.readouterr().out.splitlines() if "stopped at epoch" in line]
    assert len(out) == 1 and reason in out[0] and "--lr-max" in out[0] and "--eps-warmup" in out[0]
    for name in ("last_good.pt", "best.pt"):
        if (tmp_path / name).exists():
            assert torch.load(tmp_path / name, weights_only=False)["epoch"] < t.epoch


def test_a_model_at_chance_after_its_first_epoch_only_is_not_dead(tmp_path):
    """The chance-level rule starts after epoch 1 (the cyclic lr starts at 0); a model that learns is never dead."""
    t = fit(method="fgsm_rs", epochs=2, **{**TINY, "on_diverge": "stop", "subset": 640, "batch_size": 32,
                                          "eval_n": 200, "eps": 0.1, "lr_schedule": "constant"})
    epochs = [r for r in t.history if r.get("event") == "epoch"]
    assert len(epochs) == 2 and t.stopped is None and epochs[-1]["clean_acc"] > t.chance + 0.1


def test_co_needs_the_clean_accuracy_to_hold(monkeypatch):
    """(a) vs (b) in the monitors: a PGD drop is CO only while the clean accuracy keeps half of its best gain over
    chance; the same drop with the clean accuracy falling towards chance is not CO."""
    from types import SimpleNamespace

    import fastat.eval
    from fastat.train.monitor import COMonitor, clean_held, divergence

    assert clean_held(0.80, 0.82, 0.1) and clean_held(0.5, 0.82, 0.1) and not clean_held(0.4, 0.82, 0.1)
    assert not clean_held(0.11, 0.11, 0.1)
    assert divergence(0.11, 0.10, 1.0, True) and divergence(0.5, 0.1, float("nan"), True)
    assert divergence(0.5, 0.1, 1.0, False) and divergence(0.5, 0.1, 1.0, True) is None
    y = torch.arange(10).repeat(4)
    for clean_seq, co_at_3 in (((0.6, 0.7, 0.75), True), ((0.6, 0.7, 0.3), False)):
        results = iter([SimpleNamespace(robust_acc=p, clean_acc=c) for p, c in zip((0.3, 0.4, 0.02), clean_seq)])
        monkeypatch.setattr(fastat.eval, "pgd_robustness", lambda *a, _it=results, **k: next(_it))
        mon = COMonitor(torch.zeros(40, 1, 4, 4), y, 0.1)
        flags = [mon.check(torch.nn.Identity())[1] for _ in range(3)]
        assert flags == [False, False, co_at_3]
        state = mon.state_dict()
        assert state["best_clean"] == max(clean_seq) and state["clean_history"] == list(clean_seq)


def test_after_a_roll_back_a_drop_is_measured_from_the_restored_epoch(monkeypatch):
    """The monitor after a roll-back compares with the restored epoch's own PGD accuracy: a retrained epoch no
    lower than that minus ``drop`` is not CO again, however high an earlier peak was (without the re-base the
    same epoch was rolled back until ZeroGrad's q reached 1)."""
    from types import SimpleNamespace

    import fastat.eval
    from fastat.train.monitor import COMonitor

    robust = iter([0.5, 0.35, 0.1, 0.2, 0.1])  # peak, a good epoch 0.15 lower, a collapse, its retrained epoch, ...
    monkeypatch.setattr(fastat.eval, "pgd_robustness",
                        lambda *a, **k: SimpleNamespace(robust_acc=next(robust), clean_acc=0.8))
    mon = COMonitor(torch.zeros(40, 1, 4, 4), torch.arange(10).repeat(4), 0.1, drop=0.2)
    assert [mon.check(torch.nn.Identity())[1] for _ in range(2)] == [False, False]
    good = mon.state_dict()  # what last_good.pt holds after epoch 2
    assert mon.check(torch.nn.Identity())[1]  # epoch 3: 0.1 < 0.5 - 0.2
    mon.load_state_dict(good)
    mon.after_rollback()
    assert mon.best == 0.35
    assert not mon.check(torch.nn.Identity())[1]  # retrained epoch 3: 0.2 >= 0.35 - 0.2 (0.5 - 0.2 would flag it)
    assert mon.check(torch.nn.Identity())[1]  # a further collapse below the restored epoch's level is CO again


@pytest.mark.usefixtures("alive")
def test_the_trainer_re_bases_its_monitor_after_a_roll_back(tmp_path, monkeypatch):
    from fastat.train import monitor

    calls, rebased = iter([(0.5, False), (0.1, True), (0.5, False)]), []
    monkeypatch.setattr(monitor.COMonitor, "check", lambda self, model, precision="fp32", **kw: next(calls))
    monkeypatch.setattr(monitor.COMonitor, "after_rollback", lambda self: rebased.append(len(self.history)))
    fit(method="zerograd", epochs=2, out=str(tmp_path), on_co="rollback", method_kwargs={"q": 0.35}, **TINY)
    assert rebased == [0]  # once, after the monitor's state was restored (the scripted check records no history)


def test_resume_a_checkpoint_written_before_newer_config_fields(tmp_path):
    from fastat.checkpoint import load_checkpoint

    fit(method="fgsm_rs", epochs=1, out=str(tmp_path), **TINY)
    ck = load_checkpoint(tmp_path / "checkpoint.pt", weights_only=False)
    for key in ("drop_last", "pad_mode", "attack_precision", "download"):  # fields added after that run
        ck["config"].pop(key)
    torch.save(ck, tmp_path / "checkpoint.pt")
    (tmp_path / "checkpoint.pt.sha256").unlink()  # a checkpoint of an older fastat: no checksum record
    (tmp_path / "last_good.pt").unlink(missing_ok=True)  # (so the resume cannot fall back to it)
    t = Trainer(TrainConfig(method="fgsm_rs", epochs=1, out=str(tmp_path), **TINY))
    assert t.resume() and t.epoch == 1
    bad = Trainer(TrainConfig(method="fgsm_rs", epochs=1, out=str(tmp_path), pad_mode="reflect", **TINY))
    with pytest.raises(ConfigError, match="pad_mode"):
        bad.resume()


def test_sweep_refuses_a_repeated_label():
    from fastat.train.sweeps import parse_methods

    with pytest.raises(ConfigError, match="'a' is given twice"):
        parse_methods(["a=fgsm", "a=zerograd"])
    with pytest.raises(ConfigError, match="twice"):
        parse_methods(["fgsm,fgsm"])


def test_atas_warns_when_warm_up_covers_the_run():
    from fastat.methods import ATAS

    with pytest.warns(UserWarning, match="warmup_epochs"):
        ATAS(eps=0.1, epochs=3)


def test_wong_co_check_uses_the_first_training_batch_in_train_mode(tmp_path):
    from fastat.train import WongCODetector

    t = fit(method="fgsm_rs", epochs=2, out=str(tmp_path), co_check="wong", **{**TINY, "co_steps": 5})
    assert isinstance(t.monitor, WongCODetector) and len(t.monitor.history) == 2
    assert [r["co_pgd_acc"] for r in t.history] == t.monitor.history
    assert json.loads((tmp_path / "run.json").read_text())["co_check"] == "wong"
    x, y = t._first_batch
    assert x.shape[0] == TINY["batch_size"]
    # standalone: train mode (BN batch statistics, running ones updated), a drop from the previous epoch
    from fastat.models import build_model

    model = build_model("small-cnn", in_channels=1, num_classes=10, input_size=(28, 28), width=4, hidden=8)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    det = WongCODetector(eps=0.2, steps=2, previous=0.9)
    acc, co = det.check(model, x, y)
    from fastat.train.monitor import chance_level, clean_held

    clean = det.clean_history[-1]
    assert co == (acc < 0.7 and clean_held(clean, clean, chance_level(y))) and det.previous == acc and model.training
    assert not torch.equal(bn.running_mean, before)
    det.load_state_dict({"previous": 0.1, "history": [0.1]})
    assert det.check(model, x, y)[1] is False and det.history[0] == 0.1
    with pytest.raises(ConfigError, match="co_check"):
        TrainConfig(method="fgsm", co_check="nope", **TINY).validate()


def test_wong_check_runs_before_the_evaluation_so_logged_numbers_are_the_saved_weights(tmp_path):
    t = fit(method="fgsm_rs", epochs=1, out=str(tmp_path), co_check="wong", **TINY)
    logged = t.history[-1]
    again = t.evaluate()  # the model as saved: the train-mode check must not have moved BN after the evaluation
    assert (again["clean_acc"], again["pgd_acc"]) == (logged["clean_acc"], logged["pgd_acc"])


def test_resume_refusal_names_a_changed_default(tmp_path):
    fit(method="fgsm_rs", epochs=1, out=str(tmp_path), **{**TINY, "lr_peak": 0.4})
    t = Trainer(TrainConfig(method="fgsm_rs", epochs=1, out=str(tmp_path), **TINY))
    with pytest.raises(ConfigError, match=r"default of lr_peak changed from 0\.4 to 0\.5 .*pass lr_peak=0\.4"):
        t.resume()


def test_progress_is_one_line_per_epoch_when_not_a_terminal(capfd):
    """progress=True draws tqdm bars only on a terminal: into a file or pipe (here pytest's capture) the trainer
    writes its one line per epoch and no carriage-return frames."""
    fit(method="fgsm_rs", epochs=2, **{**TINY, "progress": True})
    out, err = capfd.readouterr()
    assert "\r" not in out + err and len([line for line in out.splitlines() if line.startswith("epoch")]) == 2
