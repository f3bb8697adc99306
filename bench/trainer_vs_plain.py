"""fastat's trainer against a plain PyTorch loop: training seconds per epoch on the same cell, paired and alternated.

The plain loop is the independent yardstick (../shared/reference/fmnist_co_sweep.py, written without fastat); fastat
trains the same cell with `fastat.train` (`bench/co_atlas.py`'s settings: small CNN, the first ``--subset``
Fashion-MNIST images, batch 64, fp32 on the CPU). Each pair runs the two one after the other, in separate processes
with ``--threads`` threads each, the order alternating from pair to pair, so a machine that drifts slows both alike;
the figure to quote is the median of the per-pair ratios. Only training time is compared (fastat's
``train_seconds``, the yardstick's ``train_sec``: the loop over the batches, data loading included, evaluation not).

    python bench/trainer_vs_plain.py --method fgsm_rs --eps 0.25 --epochs 2 --pairs 4

Writes ``--out`` (JSON) when given; prints one line per pair and the median ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench")]
import co_atlas  # noqa: E402  (the atlas's cell settings and the yardstick's method names)
import co_atlas_report  # noqa: E402  (the environment line)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="fgsm_rs", choices=sorted(co_atlas.YARDSTICK))
    p.add_argument("--eps", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--subset", type=int, default=5000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--yardstick", default=str(co_atlas.YARDSTICK_PATH))
    p.add_argument("--out", default=None, help="JSON file for the per-pair numbers")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one fastat run, in its own process
    args = p.parse_args(argv)
    if args.epochs < 1 or args.pairs < 1 or args.threads < 1:
        p.error("--epochs, --pairs and --threads must be >= 1")
    if not args.child and not Path(args.yardstick).is_file():
        p.error(f"--yardstick {args.yardstick!r} is not a file")
    return args


def _atlas_args(args: argparse.Namespace) -> argparse.Namespace:
    # per-epoch evaluation on 50 images: it is not timed, only kept short
    return co_atlas.parse_args(["--epochs", str(args.epochs), "--subset", str(args.subset), "--eval-n", "50",
                                "--threads", str(args.threads), "--yardstick", args.yardstick])


def child(args: argparse.Namespace) -> int:
    """Train fastat's run once; print its training seconds per epoch."""
    import dataclasses

    import torch

    from fastat.train import fit

    torch.set_num_threads(args.threads)
    atlas = _atlas_args(args)
    cfg = co_atlas.fastat_config(atlas, co_atlas.Task("fastat", args.method, args.eps, 0))
    with tempfile.TemporaryDirectory() as out:
        trainer = fit(dataclasses.replace(cfg, out=out, on_diverge="log"))
    rows = [r for r in trainer.history if r.get("event", "epoch") == "epoch"]
    print(json.dumps({"train_s_per_epoch": statistics.fmean(r["train_seconds"] for r in rows),
                      "malloc": trainer.malloc}))
    return 0


def _fastat(args: argparse.Namespace, env: dict[str, str]) -> dict:
    cmd = [sys.executable, __file__, "--child", "--method", args.method, "--eps", str(args.eps), "--epochs",
           str(args.epochs), "--subset", str(args.subset), "--threads", str(args.threads),
           "--yardstick", args.yardstick]
    proc = subprocess.run(cmd, env=env, text=True, capture_output=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _plain(args: argparse.Namespace, env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd, env = co_atlas.yardstick_call(_atlas_args(args), co_atlas.Task("yardstick", args.method, args.eps, 0),
                                           Path(out), env)
        subprocess.run(cmd, env=env, text=True, capture_output=True, check=True)
        (result,) = json.loads((Path(out) / "co_fmnist.json").read_text())
    return {"train_s_per_epoch": result["train_sec"] / args.epochs}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(REPO / "python"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    pairs = []
    for i in range(args.pairs):
        order = (_fastat, _plain) if i % 2 == 0 else (_plain, _fastat)
        got = {f.__name__: f(args, env) for f in order}
        fastat, plain = got["_fastat"]["train_s_per_epoch"], got["_plain"]["train_s_per_epoch"]
        pairs.append({"fastat": fastat, "plain": plain, "ratio": fastat / plain,
                      "fastat_malloc": got["_fastat"]["malloc"]})
        print(f"pair {i + 1}: fastat {fastat:.2f} s/epoch, plain loop {plain:.2f} s/epoch, "
              f"ratio {pairs[-1]['ratio']:.3f} (fastat's malloc: {pairs[-1]['fastat_malloc']})", flush=True)
    ratio = statistics.median(p["ratio"] for p in pairs)
    print(f"{args.method} eps={args.eps:g}: fastat / plain loop training time, median of {len(pairs)} pairs: "
          f"{ratio:.3f} (fastat {statistics.median(p['fastat'] for p in pairs):.2f} s/epoch, plain "
          f"{statistics.median(p['plain'] for p in pairs):.2f} s/epoch; {args.threads} thread(s))")
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "child"},
                                              "env": co_atlas_report.environment(_atlas_args(args)), "pairs": pairs,
                                              "median_ratio": ratio}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
