"""Smoke tests of the GPU scripts bench/acceptance.py and bench/bench_steps.py in their tiny CPU mode (main() called
in-process, so the dataset is decoded once and torch is imported once)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
TINY_MODEL = ["--device", "cpu", "--model", "small-cnn", "--model-kwarg", "width=4", "--model-kwarg", "hidden=16"]
TINY_RUN = [*TINY_MODEL, "--subset", "128", "--batch-size", "64", "--epochs", "1", "--eval-n", "32",
            "--eval-steps", "1"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny CPU models (tests/conftest.py)


def test_acceptance_smoke_reuse_and_merge(tmp_path, capsys):
    acc = _load("acceptance")
    out, runs = tmp_path / "out", tmp_path / "runs"
    methods = ["--methods", "fgsm_rs,zerograd,atas,gradalign,apart"]
    assert acc.main([*TINY_RUN, *methods, "--out", str(out), "--runs", str(runs)]) == 0
    for ext in ("json", "csv", "md", "png"):
        assert (out / f"acceptance.{ext}").stat().st_size > 0
    doc = json.loads((out / "acceptance.json").read_text())
    by_label = {m["label"]: m for m in doc["methods"]}
    assert [m["status"] for m in doc["methods"]] == ["done"] * 5
    assert by_label["zerograd"]["hparams"]["q"] == pytest.approx(0.7)
    assert by_label["gradalign"]["hparams"]["lam"] == 2.0
    assert by_label["atas"]["hparams"]["c"] == pytest.approx(0.02)  # 0.01 * 128 / B with B = 64
    assert by_label["fgsm_rs"]["spec"]["cuda_graph"] is False  # part of the settings a reused run must match
    assert capsys.readouterr().out.rstrip().endswith("|")  # the Markdown table is printed last

    # a second call reuses the finished runs; a changed setting re-runs only that method
    assert acc.main([*TINY_RUN, *methods, "--hp", "fgsm_rs.alpha=0.2", "--out", str(out), "--runs", str(runs)]) == 0
    status = {m["label"]: m["status"] for m in json.loads((out / "acceptance.json").read_text())["methods"]}
    assert status == {"fgsm_rs": "done", "zerograd": "reused", "atas": "reused", "gradalign": "reused",
                      "apart": "reused"}

    # report-only merge of that report: nothing trained, every method comes from the file
    merged = tmp_path / "merged"
    assert acc.main(["--report-only", "--merge", str(out / "acceptance.json"), "--methods",
                     "fgsm_rs,zerograd,atas,gradalign,apart,pgd", "--out", str(merged)]) == 0
    status = {m["label"]: m["status"] for m in json.loads((merged / "acceptance.json").read_text())["methods"]}
    assert status == {"fgsm_rs": "merged", "zerograd": "merged", "atas": "merged", "gradalign": "merged",
                      "apart": "merged", "pgd": "not run"}


def test_acceptance_budget_and_bad_args(tmp_path):
    acc = _load("acceptance")
    out = tmp_path / "out"
    argv = [*TINY_RUN, "--methods", "fgsm,pgd", "--budget", "0", "--out", str(out), "--runs", str(tmp_path / "r")]
    assert acc.main(argv) == 0
    status = {m["label"]: m["status"] for m in json.loads((out / "acceptance.json").read_text())["methods"]}
    assert status == {"fgsm": "done", "pgd": "skipped (budget)"}  # the first method always runs (nothing to go by)
    assert acc.main([*TINY_RUN, "--methods", "nope"]) == 2
    assert acc.main([*TINY_RUN, "--hp", "fgsm_rs_alpha=1"]) == 2
    assert acc.main([*TINY_RUN, "--methods", "fgsm", "--cuda-graph"]) == 2  # CUDA graphs need a GPU


def test_acceptance_rollbacks_stop_at_max(tmp_path, monkeypatch):
    """A monitor that flags CO after every epoch but the first: zerograd rolls back max_rollbacks times, then goes on,
    and the report counts them (trainer.rollbacks)."""
    from fastat.train.monitor import COMonitor

    def always_co(self, model, precision="fp32", **kw):
        co = self.best >= 0
        self.best = max(self.best, 0.5)
        self.history.append(0.0 if co else 0.5)
        return (0.0 if co else 0.5), co

    monkeypatch.setattr(COMonitor, "check", always_co)
    from fastat.train import Trainer

    monkeypatch.setattr(Trainer, "_divergence", lambda self, row: None)  # the tiny model sits at chance: not dead
    acc = _load("acceptance")
    out = tmp_path / "out"
    argv = [*TINY_RUN, "--epochs", "3", "--methods", "zerograd", "--hp", "zerograd.max_rollbacks=2",
            "--out", str(out), "--runs", str(tmp_path / "r")]
    assert acc.main(argv) == 0
    (res,) = json.loads((out / "acceptance.json").read_text())["methods"]
    assert res["status"] == "done" and res["epochs_done"] == 3 and res["rollbacks"] == 2
    assert [e["event"] for e in res["events"]] == ["rollback", "rollback"]


def test_bench_steps_smoke(tmp_path):
    steps = _load("bench_steps")
    out = tmp_path / "steps"
    argv = [*TINY_MODEL, "--shapes", "cifar,fmnist", "--batch-sizes", "8", "--steps", "2", "--warmup", "1",
            "--backend", "torch,auto,triton", "--out", str(out)]
    assert steps.main(argv) == 0
    for ext in ("json", "csv", "md"):
        assert (out / f"steps.{ext}").stat().st_size > 0
    doc = json.loads((out / "steps.json").read_text())
    assert {"device", "torch", "triton", "date"} <= set(doc["env"])
    timed = [r for r in doc["rows"] if r["backend"] in ("torch", "auto")]
    assert len(timed) == 2 * 2 * 11 and all(r["median_ms"] > 0 and r["n_steps"] == 2 for r in timed)
    assert all(r["vs_fgsm_rs"] == 1.0 for r in timed if r["method"] == "fgsm_rs")
    assert all(r["error"].startswith("unavailable") or r["median_ms"] for r in doc["rows"] if r["backend"] == "triton")
    assert steps.main([*TINY_MODEL, "--backend", "cuda-magic"]) == 2
    assert steps.main([*TINY_MODEL, "--modes", "graph"]) == 2  # CUDA graphs need a GPU
    assert steps.main([*TINY_MODEL, "--modes", "compile", "--warmup", "1"]) == 2  # the first steps compile


def test_bench_steps_compile_mode(tmp_path, monkeypatch):
    """--modes compile builds the Trainer with compile="default" and reports the speed-up over eager (torch.compile
    is stubbed: tests/train/test_compile.py runs the real one)."""
    steps = _load("bench_steps")
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: compiled.append(mode) or module)
    argv = [*TINY_MODEL, "--shapes", "fmnist", "--batch-sizes", "8", "--steps", "2", "--warmup", "2",
            "--backend", "torch", "--methods", "fgsm_rs", "--modes", "eager,compile", "--out", str(tmp_path)]
    assert steps.main(argv) == 0
    rows = {r["mode"]: r for r in json.loads((tmp_path / "steps.json").read_text())["rows"]}
    assert compiled == ["default"] and rows["eager"]["vs_eager"] is None
    assert rows["compile"]["vs_eager"] == rows["eager"]["median_ms"] / rows["compile"]["median_ms"]


def test_co_atlas_smoke_resume_and_yardstick(tmp_path, capsys):
    """bench/co_atlas.py in its tiny CPU mode, one worker: fastat's runs and the yardstick's on the same cells, the
    page, heat map and JSON written; a second call trains nothing (every run is found finished)."""
    atlas = _load("co_atlas")
    yardstick = Path(atlas.YARDSTICK_PATH)
    argv = ["--methods", "fgsm,apart", "--eps", "0.2", "--demo-eps", "0.2", "--demo-seeds", "1", "--subset", "128",
            "--epochs", "1", "--eval-n", "32", "--final-n", "32", "--workers", "1", "--threads", "1",
            "--runs", str(tmp_path / "runs"),
            "--results", str(tmp_path / "res")]
    if not yardstick.is_file():
        argv.append("--no-yardstick")
    assert atlas.main(argv) == 0
    doc = json.loads((tmp_path / "res" / "co_atlas.json").read_text())
    fgsm = doc["cells"]["fgsm@0.2"]
    assert len(fgsm["fastat"]) == 1 and 0 <= fgsm["fastat"][0]["final_pgd50"] <= 100
    assert len(fgsm["yardstick"]) == len(fgsm["yardstick_box"]) == (1 if yardstick.is_file() else 0)
    assert doc["cells"]["apart@0.2"]["yardstick"] == []  # the yardstick has no APART
    page = (tmp_path / "res" / "co_atlas.md").read_text()
    assert "| fgsm | 0.2 |" in page and "python bench/co_atlas.py" in page and (tmp_path / "res" / "co_atlas.png").is_file()
    capsys.readouterr()
    assert atlas.main(argv) == 0
    assert capsys.readouterr().out.count("finished before") == (4 if yardstick.is_file() else 2)
    with pytest.raises(SystemExit):
        atlas.parse_args(["--methods", "nope"])


def test_co_atlas_plan_seeds():
    """The plan: every seed of fastat everywhere; the yardstick on all the demo's seeds and --yardstick-seeds
    elsewhere; the demo's ε first."""
    atlas = _load("co_atlas")
    args = atlas.parse_args(["--methods", "fgsm,apart", "--eps", "0.1,0.25", "--no-yardstick"])
    assert {(t.kind, t.eps) for t in atlas.plan(args)} == {("fastat", 0.1), ("fastat", 0.25)}
    args = atlas.parse_args(["--methods", "fgsm,apart", "--eps", "0.1,0.25", "--yardstick", __file__])
    tasks = atlas.plan(args)
    seeds = lambda kind, eps: sorted({t.seed for t in tasks if t.kind == kind and t.eps == eps})  # noqa: E731
    assert seeds("fastat", 0.25) == [0, 1, 2] and seeds("fastat", 0.1) == [0, 1]
    assert seeds("yardstick", 0.25) == [0, 1, 2] and seeds("yardstick", 0.1) == [0]
    assert seeds("yardstick_box", 0.25) == [0, 1, 2] and seeds("yardstick_box", 0.1) == [0]
    assert all(t.method == "fgsm" for t in tasks if t.kind != "fastat")  # the yardstick has no APART
    assert [t.eps for t in tasks[:12]] == [0.25] * 12  # 3 seeds × (fgsm, apart) + 3 yardstick fgsm, as written and boxed
    args = atlas.parse_args(["--methods", "atas", "--eps", "0.25", "--yardstick", __file__])
    assert {t.kind for t in atlas.plan(args)} == {"fastat", "yardstick"}  # the script's ATAS is a different method
    args = atlas.parse_args(["--methods", "fgsm,pgd", "--eps", "0.1,0.2", "--demo-eps", "0.3", "--no-yardstick"])
    order = [(t.method, t.eps, t.seed) for t in atlas.plan(args)]  # seed 0: the cheap methods at every ε first
    assert order == [("fgsm", 0.1, 0), ("fgsm", 0.2, 0), ("pgd", 0.1, 0), ("pgd", 0.2, 0),
                     ("fgsm", 0.1, 1), ("fgsm", 0.2, 1), ("pgd", 0.1, 1), ("pgd", 0.2, 1)]


def test_pertalign_lead_retraces_an_atlas_run(tmp_path, capsys):
    """bench/pertalign_lead.py on a tiny atlas run: the run trained again with the PertAlign check follows the same
    trajectory (the checks do not change training), and the page, JSON and step cost are written."""
    atlas = _load("co_atlas")
    flags = ["--subset", "128", "--epochs", "2", "--eval-n", "32", "--final-n", "32", "--batch-size", "64"]
    runs = str(tmp_path / "runs")
    assert atlas.main(["--methods", "fgsm", "--eps", "0.2", "--demo-eps", "0.2", "--demo-seeds", "1", "--workers", "1",
                       "--threads", "1", "--no-yardstick", "--runs", runs, "--results", str(tmp_path / "res"),
                       *flags]) == 0
    lead = _load("pertalign_lead")
    assert lead.main(["--cells", "fgsm:0.2:0", "--runs", runs, "--out", str(tmp_path / "pa"), "--workers", "1",
                      "--results", str(tmp_path / "res"), "--timing-steps", "2", "--atlas-flags", " ".join(flags)]) == 0
    doc = json.loads((tmp_path / "res" / "pertalign.json").read_text())
    (run,) = doc["runs"]
    assert run["same_trajectory"] and len(run["pertalign"]) == 2 and doc["step_cost"]["median_s_with"] > 0
    page = tmp_path / "res" / "pertalign.md"
    assert "| fgsm ε=0.2 s0 | yes |" in page.read_text() and isinstance(run["relative_flags"], list) and "absolute_flags" in run
    # a reading written by hand below the marker survives the next rewrite (the runs are reused, nothing retrains)
    page.write_text(page.read_text() + "\n## Reading\n\nby hand\n")
    assert lead.main(["--cells", "fgsm:0.2:0", "--runs", runs, "--out", str(tmp_path / "pa"), "--workers", "1",
                      "--results", str(tmp_path / "res"), "--timing-steps", "0", "--atlas-flags", " ".join(flags)]) == 0
    text = page.read_text()
    assert text.endswith("\n## Reading\n\nby hand\n") and text.count(_load("co_atlas_report").KEEP) == 1 and "Step cost" not in text


def test_the_two_pertalign_rules_replayed_on_an_epoch_series():
    lead = _load("pertalign_lead")
    relative, absolute = lead.rules(0.5)["relative"], lead.rules(0.5)["absolute"]
    assert lead.replay([0.06, 0.33, 0.27, 0.18, 0.16, None, 0.2], relative) == [5]
    assert lead.replay([0.87, 0.80, 0.63], relative) == [] and lead.replay([-0.1, -0.3, 0.2], relative) == []
    # the absolute fall flags a high level drifting down and cannot see a collapse from a low one; the ratio the reverse
    assert lead.replay([0.87, 0.80, 0.63], absolute) == [3] and lead.replay([0.2, 0.05, 0.01], absolute) == []
    assert lead.replay([0.2, 0.05, 0.01], relative) == [2, 3]


def test_yardstick_box_patches_every_anchor_once_and_keeps_the_random_draws(tmp_path):
    """bench/yardstick_box.py on the real yardstick: every patched line found exactly once, the result compiles, takes
    the same random draws (same number of torch.rand_like / randperm calls, same order) and projects onto the box
    where the script as written does not; a script that changed fails with the line that moved."""
    box = _load("yardstick_box")
    atlas = _load("co_atlas")
    yardstick = Path(atlas.YARDSTICK_PATH)
    if not yardstick.is_file():
        pytest.skip("the yardstick (../shared/reference/fmnist_co_sweep.py) is not beside this checkout")
    source = yardstick.read_text()
    patched = box.write_patched(yardstick, tmp_path / "y.py").read_text()
    compile(patched, "y.py", "exec")
    draws = lambda text: [line.count("rand_like") + line.count("randperm") for line in text.splitlines()  # noqa: E731
                          if "rand_like" in line or "randperm" in line]
    assert draws(patched) == draws(source)
    assert patched.count("torch.clamp(x + d, 0, 1) - x") == 5 and patched.count("0, 1) - x).requires_grad_") == 1
    with pytest.raises(box.PatchError, match="d0 = \\(\\(torch.rand_like\\(xs\\)"):
        box.patch(source.replace("d0 = ((torch.rand_like(xs)", "d0 = ((torch.randn_like(xs)"))


def test_trainer_vs_plain_pairs_the_two_loops(tmp_path):
    """bench/trainer_vs_plain.py on a tiny cell: one pair, both loops timed, the ratio is theirs."""
    atlas = _load("co_atlas")
    if not Path(atlas.YARDSTICK_PATH).is_file():
        pytest.skip("the yardstick (../shared/reference/fmnist_co_sweep.py) is not beside this checkout")
    bench = _load("trainer_vs_plain")
    out = tmp_path / "pair.json"
    assert bench.main(["--epochs", "1", "--pairs", "1", "--subset", "128", "--out", str(out)]) == 0
    (pair,) = json.loads(out.read_text())["pairs"]
    assert pair["fastat"] > 0 and pair["plain"] > 0 and pair["ratio"] == pytest.approx(pair["fastat"] / pair["plain"])
    assert pair["fastat_malloc"] and isinstance(pair["fastat_malloc"], str)  # what the trainer's allocator did


def test_yardstick_comparison_is_seed_for_seed():
    """A cell is judged on fastat's runs of the seeds the yardstick ran (the atlas's FGSM ε = 0.2 cell: fastat's seeds
    0 and 1 end at 21.8 and 3.6 % PGD-20, the yardstick's seed 0 at 19.2 %)."""
    report = _load("co_atlas_report")
    run = lambda seed, pgd: {"seed": seed, "pgd20_last_epoch": pgd}  # noqa: E731
    cell = {"fastat": [run(0, 21.8), run(1, 3.6)], "yardstick_box": [run(0, 19.2)]}
    assert report._agrees(cell, "yardstick_box") and report._verdict(cell, "yardstick_box") == "yes (seed 0)"
    cell["yardstick_box"].append(run(1, 20.0))  # both seeds: 12.7 against 19.6 ± 0.6 — more than 5 points apart
    assert not report._agrees(cell, "yardstick_box") and report._verdict(cell, "yardstick_box") == "**no**"
    assert not report._agrees({"fastat": [run(1, 3.6)], "yardstick_box": [run(0, 19.2)]}, "yardstick_box")
