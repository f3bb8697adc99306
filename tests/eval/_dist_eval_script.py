"""Run under torchrun by tests/eval/test_distributed_eval.py: sharded PGD (and AutoAttack) on every rank.

Usage: ``torchrun ... _dist_eval_script.py CASE.pt OUT_DIR``. CASE.pt holds the pickled model, the samples and a list
of named cases (keyword arguments of `pgd_robustness` / `run_autoattack`); each rank writes ``OUT_DIR/rank{k}.pt``
with its results per case, plus its shard of each case, for the test to compare with a single-process run.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from fastat import distributed as fdist
from fastat.eval import _starts, pgd_robustness, run_autoattack

PGD_FIELDS = ("clean", "robust_max_loss", "robust_any", "robust", "restart_loss", "restart_correct")


def main(case_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    world = fdist.init("cpu")
    assert world.enabled, "run me under torchrun with 2 processes"
    case = torch.load(case_path, weights_only=False)
    model = case["model"]
    out = {"rank": world.rank, "world_size": world.world_size}
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    for name, kw in case["pgd"].items():
        n = int(kw.pop("n"))
        res = pgd_robustness(ddp if kw.pop("ddp", False) else model, case["x"][:n], case["y"][:n], **kw)
        out[name] = {**{f: getattr(res, f) for f in PGD_FIELDS}, **res.to_dict(),
                     "shard": fdist.shard_range(n, world.rank, world.world_size, align=_starts.BLOCK)}
    for name, kw in case.get("autoattack", {}).items():
        n = int(kw.pop("n"))
        x, y = case["x"][:n], case["y"][:n]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # reduced (custom) AutoAttack warns
            res = run_autoattack(model, x, y, **kw)
            lo, hi = fdist.shard_range(n, world.rank, world.world_size)
            alone = run_autoattack(model, x[lo:hi], y[lo:hi], **kw, distributed=False) if hi > lo else None
        out[name] = {"robust": res.robust, **res.to_dict(), "shard": (lo, hi),
                     "alone_robust": alone.robust if alone is not None else torch.zeros(0, dtype=torch.bool)}
    try:  # ranks that pass different samples: a ValueError on every rank, no hang
        pgd_robustness(model, case["x"][:50 + world.rank], case["y"][:50 + world.rank], 0.1, 0.025, steps=1)
    except ValueError as exc:
        out["mismatch_error"] = str(exc)
    torch.save(out, Path(out_dir) / f"rank{world.rank}.pt")
    fdist.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
