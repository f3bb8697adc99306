"""``fastat plot runs/A runs/B [-o plot.png]``: overlay the clean/PGD accuracy curves of runs and print a table (and,
for runs trained with ``--final-eval``, their final PGD-50-10 / AutoAttack table of the last, best and EMA weights)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parser", "final_table", "run"]


def final_table(runs: dict[str, list[dict]]) -> str:
    """A text table of each run's last epoch (and its best PGD accuracy)."""
    from tabulate import tabulate

    rows = []
    for name, rs in runs.items():
        last = rs[-1]
        best = max(rs, key=lambda r: r["pgd_acc"])
        secs = sum(r.get("train_seconds", 0.0) for r in rs) / len(rs)
        rows.append([name, last["epoch"], f"{100 * last['clean_acc']:.1f}", f"{100 * last['pgd_acc']:.1f}",
                     f"{100 * best['pgd_acc']:.1f} (ep {best['epoch']})", f"{secs:.1f}"])
    return tabulate(rows, headers=["run", "epochs", "clean %", "PGD %", "best PGD %", "s/epoch"])


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plot", help="overlay training curves of run folders into one PNG")
    p.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl)")
    p.add_argument("-o", "--output", default="curves.png", help="PNG path (default: ./curves.png)")
    p.add_argument("--title", default=None)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import json

    from .train.records import final_eval_table, plot_curves, read_metrics

    runs = {}
    for r in args.runs:
        try:
            rows = read_metrics(r)
        except (FileNotFoundError, ValueError) as exc:
            print(f"fastat plot: error: {exc}", file=sys.stderr)
            return 2
        if not rows:
            print(f"fastat plot: error: run {r!r} has no epoch rows yet", file=sys.stderr)
            return 2
        runs[Path(r).name] = rows
    out = plot_curves(runs, args.output, args.title)
    print(final_table(runs))
    finals = {Path(r).name: json.loads((Path(r) / "final_eval.json").read_text()) for r in args.runs
              if (Path(r) / "final_eval.json").is_file()}
    if finals:
        print("\n" + final_eval_table(finals))
    print(f"wrote {out}")
    return 0
