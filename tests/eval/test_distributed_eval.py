"""Sharded evaluation under torchrun (2 CPU ranks, gloo): the same per-sample results as one process.

One torchrun job (`_dist_eval_script.py`) runs every PGD/AutoAttack case; the tests compare each rank's result with a
single-process run in this process (one thread, as the ranks). A second job runs the ``fastat eval`` CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _torchrun import needs_gloo, torchrun  # tests/ is on sys.path (rootdir conftest)
from fastat.eval import autoattack_available, cli, pgd_robustness, run_autoattack

from ._models import save_cli_checkpoint, tiny_cnn, tiny_data, write_fake_fmnist

SCRIPT = Path(__file__).with_name("_dist_eval_script.py")
PGD = {"eps": 0.1, "alpha": 0.025, "steps": 3, "restarts": 2, "seed": 3}
PGD_CASES = {  # n = 600 (3 blocks of 256): rank 0 gets block 0, rank 1 block 1 and the partial block 2
    "batched": {"n": 600},
    "small_pool": {"n": 600, "batch_size": 40, "compact_every": 1},
    "plain": {"n": 600, "impl": "plain", "batch_size": 100},
    "no_early_stop": {"n": 600, "early_stop": False},
    "tiny": {"n": 100},  # a single block: rank 0's shard is empty
    "local": {"n": 300, "distributed": False},  # every rank evaluates everything
    "ddp": {"n": 300, "ddp": True},  # a DistributedDataParallel wrapper is unwrapped
}
AA_CASE = {"n": 40, "eps": 0.1, "version": "custom", "attacks": ["apgd-ce"], "n_iter": 3, "batch_size": 16,
           "device": "cpu", "seed": 0}
FIELDS = ("clean", "robust_max_loss", "robust_any", "robust", "restart_correct", "restart_loss")

pytestmark = needs_gloo


@pytest.fixture(scope="module")
def case():
    model = tiny_cnn()
    x, y = tiny_data(600, model=model)
    y[::7] = (y[::7] + 1) % 5  # some clean-wrong samples
    return model, x, y


@pytest.fixture(scope="module")
def ranks(case, tmp_path_factory):
    """Each rank's results of every case, from one torchrun job."""
    model, x, y = case
    folder = tmp_path_factory.mktemp("dist_eval")
    payload = {"model": model, "x": x, "y": y, "pgd": {k: {**PGD, **v} for k, v in PGD_CASES.items()}}
    if autoattack_available():
        payload["autoattack"] = {"aa": dict(AA_CASE)}
    torch.save(payload, folder / "case.pt")
    torchrun(SCRIPT, str(folder / "case.pt"), str(folder), timeout=300)
    return [torch.load(folder / f"rank{k}.pt", weights_only=False) for k in range(2)]


def _single(model, x, y, name):
    """The case run in this process (no process group), on one thread as the ranks: the same kernels."""
    kw = {k: v for k, v in PGD_CASES[name].items() if k not in ("n", "distributed", "ddp")}
    n = PGD_CASES[name]["n"]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return pgd_robustness(model, x[:n], y[:n], **PGD, **kw)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", list(PGD_CASES))
def test_sharded_pgd_equals_single_process(case, ranks, name):
    model, x, y = case
    ref = _single(model, x, y, name)
    world = 1 if name == "local" else 2
    for out in ranks:
        got = out[name]
        for f in FIELDS:  # restart_loss too: each row's CE comes from the same kernels whatever the pool holds
            assert torch.equal(got[f], getattr(ref, f)), (name, out["rank"], f)
        for key in ("clean_acc", "robust_acc", "robust_acc_max_loss", "robust_acc_any", "n"):
            assert got[key] == ref.to_dict()[key], (name, key)
        assert got["world_size"] == world and ref.settings["world_size"] == 1
    a, b = ranks[0][name], ranks[1][name]
    assert a["batch_size"] == b["batch_size"] and a["forward_rows"] == b["forward_rows"] > 0
    if world == 2:  # the slowest rank's time on every rank
        assert a["seconds"] == b["seconds"]


def test_shards_and_empty_rank(ranks):
    assert ranks[0]["batched"]["shard"] == (0, 256) and ranks[1]["batched"]["shard"] == (256, 600)
    assert ranks[0]["tiny"]["shard"] == (0, 0) and ranks[1]["tiny"]["shard"] == (0, 100)
    assert ranks[0]["tiny"]["robust"].shape == (100,)
    assert 0 < ranks[0]["batched"]["robust_acc_max_loss"] < ranks[0]["batched"]["clean_acc"] < 1  # not trivial


def test_ranks_with_different_samples_all_raise(ranks):
    for out in ranks:
        assert "same full set on every rank" in out["mismatch_error"] and "[[50, " in out["mismatch_error"]


@pytest.mark.skipif(not autoattack_available(), reason="pyautoattack is not installed")
def test_sharded_autoattack(case, ranks):
    model, x, y = case
    n = AA_CASE["n"]
    a, b = ranks[0]["aa"], ranks[1]["aa"]
    assert torch.equal(a["robust"], b["robust"]) and a["robust"].shape == (n,)
    assert a["shard"] == (0, 20) and b["shard"] == (20, 40)
    # each rank's part is exactly what AutoAttack gives on that shard alone (same seed)
    assert torch.equal(a["robust"], torch.cat([a["alone_robust"], b["alone_robust"]]))
    assert a["robust_acc"] == b["robust_acc"] == pytest.approx(float(a["robust"].float().mean()))
    with torch.no_grad():
        clean = model(x[:n]).argmax(1) == y[:n]
    assert a["clean_acc"] == pytest.approx(float(clean.float().mean()))
    assert not (a["robust"] & ~clean).any()
    assert a["per_attack"]["apgd-ce"] == pytest.approx(a["robust_acc"], abs=1e-6)  # robust_acc: a float32 mean
    assert a["seconds"] == b["seconds"] and a["world_size"] == 2


def test_distributed_true_needs_a_process_group(case):
    model, x, y = case
    with pytest.raises(ValueError, match="'distributed'"):
        pgd_robustness(model, x[:8], y[:8], 0.1, 0.025, steps=1, restarts=1, distributed=True)
    with pytest.raises(ValueError, match="'distributed'"):
        pgd_robustness(model, x[:8], y[:8], 0.1, 0.025, steps=1, restarts=1, distributed="yes")
    if autoattack_available():
        with pytest.raises(ValueError, match="'distributed'"):
            run_autoattack(model, x[:8], y[:8], 0.1, distributed=True)
    res = pgd_robustness(model, x[:8], y[:8], 0.1, 0.025, steps=1, restarts=1, distributed=None)
    assert res.settings["world_size"] == 1


def test_rank_device_rules(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(cli.EvalInputError, match="cuda:LOCAL_RANK"):
        cli._rank_device("cuda:1")
    assert cli._rank_device("cpu") == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    with pytest.raises(cli.EvalInputError, match="LOCAL_RANK"):
        cli._rank_device(None)


# ---------------------------------------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A fake Fashion-MNIST (300 test images: a full block for rank 0, a partial one for rank 1) and a checkpoint."""
    root = write_fake_fmnist(tmp_path_factory.mktemp("dist_cli"), n_test=300)
    return root, save_cli_checkpoint(root / "runs" / "demo" / "checkpoint.pt", epoch=1)


def _cli_args(root: Path, ckpt: Path, out: Path) -> list[str]:
    # --num-samples, not --n: torchrun's own parser rejects "--n" as an ambiguous abbreviation of its options
    return [str(ckpt), "--data-root", str(root), "--num-samples", "300", "--pgd-steps", "2", "--restarts", "2",
            "--eps", "8/255", "--no-progress", "--out", str(out)]


def test_cli_under_torchrun_equals_single_process(checkpoint, capsys):
    root, ckpt = checkpoint
    proc = torchrun("fastat", "eval", *_cli_args(root, ckpt, root / "dist"), module=True, timeout=300)
    assert proc.stdout.count("clean accuracy") == 1  # the table, from rank 0 only
    assert proc.stdout.count("wrote ") == 1 and "2 processes, rank 0 on cpu" in proc.stdout
    assert sorted(p.name for p in (root / "dist").iterdir()) == ["eval.csv", "eval.json"]
    dist = json.loads((root / "dist" / "eval.json").read_text())
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(_cli_args(root, ckpt, root / "single") + ["--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(before)
    single = json.loads((root / "single" / "eval.json").read_text())
    assert dist["world_size"] == dist["pgd"]["world_size"] == 2 and single["world_size"] == 1
    assert dist["n"] == single["n"] == 300
    for key in ("clean_acc", "robust_acc", "robust_acc_max_loss", "robust_acc_any"):
        assert dist["pgd"][key] == single["pgd"][key], key
    assert dist["clean_acc"] == single["clean_acc"]


def test_cli_bad_input_under_torchrun_exits_2(checkpoint):
    root, ckpt = checkpoint
    with pytest.raises(AssertionError) as info:
        torchrun("fastat", "eval", *_cli_args(root, ckpt, root / "bad"), "--eps", "0", module=True, timeout=120)
    text = str(info.value)
    assert "fastat eval: error: --eps must be > 0" in text and "exitcode  : 2" in text
    assert not (root / "bad").exists()
