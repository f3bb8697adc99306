"""`fastat sweep` / `fastat.train.sweep` on tiny CPU runs: aggregation, skip and resume, scoped --hp, errors."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from fastat.cli import main
from fastat.data import FASHION_MNIST_ROOT
from fastat.train import ConfigError, Trainer, sweep
from fastat.train.records import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny CPU models (tests/conftest.py)

TINY = dict(eps=0.2, subset=128, batch_size=64, device="cpu", model="small-cnn",
            model_kwargs={"width": 4, "hidden": 16}, eval_n=32, eval_steps=2, co_batch=16, co_steps=1,
            progress=False, plot=False, lr_max=0.05,
            on_diverge="log")  # tiny models sit at chance: they test other things (see test_divergence_*)
ACC = ("status", "epochs", "clean_pct", "pgd_pct", "best_pgd_pct", "best_epoch", "co", "rollbacks")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str | None:
    """The installed Fashion-MNIST, else random IDX files of its shape (enough for --subset 128, eval-n 32)."""
    if Path(FASHION_MNIST_ROOT, "train-images-idx3-ubyte.gz").is_file():
        return None
    import numpy as np

    from fastat.data import write_idx

    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for split, n in (("train", 256), ("t10k", 64)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,), dtype=np.uint8))
    return str(root)


def _cli(data_root, *args: str) -> list[str]:
    base = ["sweep", "--subset", "128", "--batch-size", "64", "--epochs", "1", "--device", "cpu", "--model",
            "small-cnn", "--eval-n", "32", "--eval-steps", "2", "--co-batch", "16", "--co-steps", "1", "--no-progress"]
    return base + (["--data-root", data_root] if data_root else []) + list(args)


def _no_training(monkeypatch):
    def fail(self):
        raise AssertionError("trained although nothing should")

    monkeypatch.setattr(Trainer, "fit", fail)


def test_summary_matches_runs_scoped_hp_and_skip(tmp_path, data_root, monkeypatch):
    out = tmp_path / "sweep"
    doc = sweep(["fgsm_rs", "zg=zerograd"], [0, 1], out, hp=["zg.q=0.7", "zg.co_drop=0.3", "alpha=0.15"],
                epochs=1, data_root=data_root, **TINY)
    assert not doc["failed"] and [(r["method"], r["seed"]) for r in doc["runs"]] == [
        ("fgsm_rs", 0), ("zg", 0), ("fgsm_rs", 1), ("zg", 1)]  # seed-major
    for ext in ("json", "csv", "md"):
        assert (out / f"summary.{ext}").stat().st_size > 0
    assert (out / "curves.png").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text())["runs"] == json.loads(json.dumps(doc["runs"]))
    for row in doc["runs"]:  # every row is its run folder's metrics
        rows = read_metrics(out / f"{row['method']}-s{row['seed']}")
        best = max(rows, key=lambda r: r["pgd_acc"])
        assert row["status"] == "done" and row["epochs"] == 1
        assert row["clean_pct"] == 100 * rows[-1]["clean_acc"] and row["pgd_pct"] == 100 * rows[-1]["pgd_acc"]
        assert row["best_pgd_pct"] == 100 * best["pgd_acc"] and row["best_epoch"] == best["epoch"]
        assert row["train_s_per_epoch"] == pytest.approx(rows[-1]["train_seconds"])
    for agg in doc["methods"]:  # mean ± sample std over the seeds of that method
        runs = [r for r in doc["runs"] if r["method"] == agg["method"]]
        assert agg["seeds_done"] == 2 and agg["seeds"] == [0, 1]
        for key in ("clean_pct", "pgd_pct", "best_pgd_pct", "train_s_per_epoch"):
            values = [r[key] for r in runs]
            assert agg[key]["mean"] == pytest.approx(statistics.fmean(values))
            assert agg[key]["std"] == pytest.approx(statistics.stdev(values))
    table = (out / "summary.md").read_text()
    assert doc["markdown"] in table and "| zg | 2/2 |" in table
    # scoped --hp reaches only its label; unscoped reaches both
    runs = {name: json.loads((out / f"{name}-s0" / "run.json").read_text()) for name in ("fgsm_rs", "zg")}
    assert runs["zg"]["hparams"]["q"] == 0.7 and runs["zg"]["config"]["co_drop"] == 0.3
    assert "q" not in runs["fgsm_rs"]["hparams"] and runs["fgsm_rs"]["config"]["co_drop"] == 0.2
    assert runs["zg"]["hparams"]["alpha"] == runs["fgsm_rs"]["hparams"]["alpha"] == 0.15
    # the same sweep again trains nothing and reports the same numbers
    _no_training(monkeypatch)
    again = sweep(["fgsm_rs", "zg=zerograd"], [0, 1], out, hp=["zg.q=0.7", "zg.co_drop=0.3", "alpha=0.15"],
                  epochs=1, data_root=data_root, **{**TINY, "progress": True})  # progress: not part of the settings
    assert [r["status"] for r in again["runs"]] == ["reused"] * 4
    assert [[r[k] for k in ACC[1:]] for r in again["runs"]] == [[r[k] for k in ACC[1:]] for r in doc["runs"]]


def test_killed_sweep_resumes_to_the_same_summary(tmp_path, data_root, monkeypatch):
    kw = dict(epochs=2, data_root=data_root, **TINY)
    straight = sweep(["fgsm", "n_fgsm"], [0], tmp_path / "a", **kw)
    calls = []
    real = Trainer.train_epoch

    def killed_in_run_2_epoch_2(self, epoch):
        calls.append(epoch)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", killed_in_run_2_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        sweep(["fgsm", "n_fgsm"], [0], tmp_path / "b", **kw)
    monkeypatch.setattr(Trainer, "train_epoch", real)
    resumed = sweep(["fgsm", "n_fgsm"], [0], tmp_path / "b", **kw)
    assert [r["status"] for r in resumed["runs"]] == ["reused", "resumed"]
    assert [[r[k] for k in ACC[1:]] for r in resumed["runs"]] == [[r[k] for k in ACC[1:]] for r in straight["runs"]]
    assert [m["pgd_pct"]["mean"] for m in resumed["methods"]] == [m["pgd_pct"]["mean"] for m in straight["methods"]]


@pytest.mark.parametrize("extra, needle", [
    (["--methods", "fgsm", "nope"], "unknown method 'nope'"),
    (["--methods", "fgsm", "zerograd", "--hp", "zerograd.bogus=1"], "zerograd: "),
    (["--methods", "fgsm", "zerograd", "--hp", "zerogard.q=0.7"], "not one of the selected methods"),
    (["--methods", "fgsm", "zerograd", "--hp", "q=0.7"], "fgsm: "),  # unscoped: every method, fgsm has no q
    (["--methods", "fgsm", "--hp", "seed=3"], "set by the sweep"),
    (["--methods", "fgsm", "--batch-size", "4096"], "batch_size"),
    (["--methods", "fgsm", "--seeds"], None),  # argparse
])
def test_bad_arguments_exit_2_before_training(tmp_path, data_root, monkeypatch, capsys, extra, needle):
    _no_training(monkeypatch)
    out = tmp_path / "sweep"
    if needle is None:
        with pytest.raises(SystemExit) as exc:
            main(_cli(data_root, "--out", str(out), *extra))
        assert exc.value.code == 2
    else:
        assert main(_cli(data_root, "--out", str(out), *extra)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fastat sweep: error:") and needle in err[0], err
    assert not out.exists()
    with pytest.raises(ConfigError, match="set by the sweep"):
        sweep(["fgsm"], [0], out, seed=1)


def test_failing_method_is_recorded_and_exits_1(tmp_path, data_root, monkeypatch, capsys):
    from fastat.methods import METHODS

    def boom(self, *args, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(METHODS["zerograd"], "perturb", boom)
    out = tmp_path / "sweep"
    assert main(_cli(data_root, "--methods", "zerograd", "fgsm", "--seeds", "0", "--out", str(out))) == 1
    captured = capsys.readouterr()
    assert "[1/2] zerograd seed 0: failed (RuntimeError: boom)" in captured.out
    assert captured.out.rstrip().endswith("|")  # the Markdown table is printed last
    doc = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in doc["runs"]] == ["error: RuntimeError: boom", "done"]
    assert "| zerograd | 0/1 (1 failed) |" in doc["markdown"] and "| fgsm | 1/1 |" in doc["markdown"]
    csv_rows = (out / "summary.csv").read_text().splitlines()
    assert len(csv_rows) == 3 and csv_rows[0].startswith("method,base_method,seed,status")


@pytest.mark.slow  # ~20 s: two processes import torch
def test_torchrun_each_run_uses_all_ranks(tmp_path, data_root):
    """Under torchrun (2 CPU ranks, gloo) consecutive runs share the one process group; rank 0 writes the files."""
    from _torchrun import needs_gloo, torchrun  # tests/ is on sys.path (rootdir conftest)

    if needs_gloo.args[0]:
        pytest.skip(needs_gloo.kwargs["reason"])
    out = tmp_path / "sweep"
    proc = torchrun("fastat", *_cli(data_root, "--methods", "fgsm", "n_fgsm", "--seeds", "0", "--out", str(out)),
                    module=True)
    assert "[2/2] n_fgsm seed 0" in proc.stdout
    doc = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in doc["runs"]] == ["done", "done"]
    assert all(r["world_size"] == 2 for run in ("fgsm-s0", "n_fgsm-s0") for r in read_metrics(out / run))


def test_final_eval_added_to_a_finished_sweep_only_evaluates(tmp_path, data_root, monkeypatch):
    kw = dict(epochs=1, data_root=data_root, **TINY)
    first = sweep(["fgsm"], [0], tmp_path, **kw)
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, epoch: pytest.fail("trained again"))
    doc = sweep(["fgsm"], [0], tmp_path, **{**kw, "final_eval": "pgd", "final_n": 8})
    (row,) = doc["runs"]
    assert row["status"] == "resumed" and row["pgd_pct"] == first["runs"][0]["pgd_pct"]
    assert 0 <= row["final_last_pgd_pct"] <= row["final_last_clean_pct"] <= 100
    assert "PGD-50-10 % (last)" in doc["markdown"] and "final_last_pgd_pct" in (tmp_path / "summary.csv").read_text()
