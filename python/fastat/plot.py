"""``fastat plot runs/A runs/B [-o plot.png]``: overlay the clean/PGD accuracy curves of runs and print a table (and,
for runs trained with ``--final-eval``, their final PGD-50-10 / AutoAttack table of the last, best and EMA weights).

Runs are labelled by their folder name, or by as many trailing path parts as it takes to tell them apart
(``sw6/fgsm-s0`` and ``sw7/fgsm-s0``). Bad input (a missing or corrupt metrics.jsonl, an output folder that does not
exist, a suffix matplotlib cannot write) prints one error line and returns 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .train.records import co_epoch, epoch_rows, finite_number

__all__ = ["add_parser", "final_table", "run", "run_labels"]


class PlotInputError(Exception):
    """Bad input to `fastat plot`; reported as one line."""


def final_table(runs: dict[str, list[dict]]) -> str:
    """A text table of each run's last epoch, its best PGD accuracy and epoch, and the first epoch the CO monitor
    flagged (`co_epoch`; rows may include events); missing / non-finite numbers show as "-"."""
    from tabulate import tabulate

    rows = []
    for name, all_rows in runs.items():
        rs = epoch_rows(all_rows)
        last = rs[-1]
        best = max((r for r in rs if finite_number(r.get("pgd_acc"))), key=lambda r: r["pgd_acc"], default=None)
        secs = [r["train_seconds"] for r in rs if finite_number(r.get("train_seconds"))]
        co = co_epoch(all_rows)
        rows.append([name, last["epoch"], _pct(last.get("clean_acc")), _pct(last.get("pgd_acc")),
                     f"{_pct(best['pgd_acc'])} ({best['epoch']})" if best else "-",
                     "-" if co is None else co, f"{sum(secs) / len(secs):.1f}" if secs else "-"])
    return tabulate(rows, headers=["run", "epochs", "clean %", "PGD %", "best PGD % (epoch)", "CO at epoch",
                                   "s/epoch"])


def _pct(value) -> str:
    return f"{100 * value:.1f}" if finite_number(value) else "-"


def run_labels(runs: list[str | Path]) -> list[str]:
    """A distinct label per run folder: its name, or its last parts joined by "/" where names collide (the fewest
    that tell the colliding runs apart); the same folder given twice gets " (2)", " (3)", ... on its repeats."""
    paths = [os.path.abspath(r) for r in runs]
    distinct = list(dict.fromkeys(paths))
    parts = [Path(p).parts[1:] or (p,) for p in distinct]
    depth = [1] * len(distinct)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clash = {name for name in names if names.count(name) > 1}
        grow = [i for i, name in enumerate(names) if name in clash and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    name_of, labels, seen = dict(zip(distinct, names)), [], {}
    for p in paths:
        seen[p] = seen.get(p, 0) + 1
        labels.append(name_of[p] + (f" ({seen[p]})" if seen[p] > 1 else ""))
    return labels


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plot", help="overlay training curves of run folders into one PNG")
    p.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl)")
    p.add_argument("-o", "--output", default="curves.png",
                   help="image path; its suffix picks the format (png, pdf, svg, ...; default: ./curves.png)")
    p.add_argument("--title", default=None)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .train.records import final_eval_table, plot_curves, read_metrics

    try:
        _check_output(Path(args.output))
        folders = [Path(r) if Path(r).is_dir() else Path(r).parent for r in args.runs]  # a run or its metrics.jsonl
        runs, finals = {}, {}
        for r, folder, label in zip(args.runs, folders, run_labels(folders)):
            try:
                rows = read_metrics(r, events=True)
            except (OSError, ValueError) as exc:
                raise PlotInputError(str(exc)) from None
            if not epoch_rows(rows):
                raise PlotInputError(f"run {r!r} has no epoch rows yet")
            runs[label] = rows
            if (folder / "final_eval.json").is_file():
                try:
                    finals[label] = json.loads((folder / "final_eval.json").read_text())
                except (OSError, ValueError) as exc:
                    raise PlotInputError(f"{folder / 'final_eval.json'}: {exc}") from None
        try:
            out = plot_curves(runs, args.output, args.title)
        except OSError as exc:
            raise PlotInputError(f"cannot write {args.output!r}: {exc.strerror or exc}") from None
    except PlotInputError as exc:
        print(f"fastat plot: error: {exc}", file=sys.stderr)
        return 2
    print(final_table(runs))
    if finals:
        print("\n" + final_eval_table(finals))
    print(f"wrote {out}")
    return 0


def _check_output(path: Path) -> None:
    """The output's folder must exist and its suffix must be a format matplotlib writes (checked before plotting)."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = path.suffix[1:].lower()
    if suffix not in formats:
        raise PlotInputError(f"-o {str(path)!r}: the suffix must be one of {', '.join(sorted(formats))}"
                             + (f", not {path.suffix!r}" if suffix else ""))
    folder = path.parent
    if not folder.is_dir():
        raise PlotInputError(f"-o {str(path)!r}: folder {str(folder)!r} does not exist")
    if path.is_dir():
        raise PlotInputError(f"-o {str(path)!r} is a folder")
