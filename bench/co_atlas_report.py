"""The CO atlas's page: co_atlas.md (tables, the command, device and date), co_atlas.png (heat map) and co_atlas.json
(every number), read from the run folders `bench/co_atlas.py` writes; also the shared pieces of the other results
pages (`environment`, `write_keeping`).

    python bench/co_atlas.py --report-only      # redraw the page from the finished runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from co_atlas import (BEST_MARGIN, COST, FINAL, KIND_LABEL, METHOD_SETTINGS, REPO, YARDSTICK, YARDSTICK_KINDS, Task,
                      plan, run_dir, seeds_at)


def _mean_std(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(values: list[float], digits: int = 1) -> str:
    ms = _mean_std(values)
    return "–" if ms is None else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Every finished run's numbers, per (method, ε): fastat's and the yardstick's."""
    from fastat.train.records import read_json

    cells: dict[str, dict[str, Any]] = {}
    for eps in args.eps:
        for method in args.methods:
            key = f"{method}@{eps:g}"
            runs, yard = [], {kind: [] for kind in YARDSTICK_KINDS}
            for seed in seeds_at(args, eps):
                folder = run_dir(args, Task("fastat", method, eps, seed))
                res, models = read_json(folder / "run_result.json"), read_json(folder / FINAL)
                if isinstance(res, dict) and res.get("rows") and isinstance(models, dict):
                    rows = res["rows"]
                    diverged = [e for e in res.get("events", []) if e.get("event") == "diverged"]
                    runs.append({
                        "seed": seed, "epochs": len(rows), "clean_last_epoch": res["clean"], "pgd20_last_epoch":
                        res["pgd"], "best_pgd20": res["best_pgd"], "best_epoch": res["best_epoch"],
                        "final_clean": models["last"]["clean_acc"], "final_pgd50": models["last"]["pgd_acc"],
                        "best_pgd50": models["best"]["pgd_acc"], "best_pgd50_epoch": models["best"]["epoch"],
                        "co": bool(res.get("co_epochs")) or bool(res.get("rollbacks")),
                        "co_epoch": min(res.get("co_epochs") or [None], key=lambda e: e or 1e9),
                        "rollbacks": res.get("rollbacks", 0), "diverged": bool(diverged),
                        "train_s_per_epoch": res["train_s_per_epoch"],
                        "seconds": res.get("seconds", 0.0) + sum(m.get("seconds", 0.0) for k, m in models.items()
                                                                 if k in ("last", "best") and
                                                                 not m.get("same_as_last"))})
                for kind in YARDSTICK_KINDS:
                    ys = read_json(run_dir(args, Task(kind, method, eps, seed)) / "co_fmnist.json")
                    if isinstance(ys, list) and ys:
                        hist = ys[0]["hist"]
                        yard[kind].append({"seed": seed, "clean_last_epoch": hist[-1][0],
                                           "pgd20_last_epoch": hist[-1][1], "best_pgd20": max(p for _, p in hist),
                                           "train_s_per_epoch": ys[0]["train_sec"] / len(hist),
                                           "seconds": ys[0]["sec"]})
            cells[key] = {"method": method, "eps": eps, "fastat": runs, **yard}
    return cells


def headline(args: argparse.Namespace, cells: dict[str, Any]) -> list[str]:
    """Five lines for the README: per ε, which methods collapsed and which held, and the yardstick's agreement."""
    lines = []
    for eps in args.eps:
        held, fell, never, dead, some = [], [], [], [], []
        for method in args.methods:
            runs = cells[f"{method}@{eps:g}"]["fastat"]
            if not runs:
                continue
            pgd = statistics.fmean(r["final_pgd50"] for r in runs)
            co, died = sum(r["co"] for r in runs), sum(r["diverged"] for r in runs)
            if died * 2 > len(runs):  # most seeds at chance: neither CO nor a remedy
                dead.append(f"{method} ({died}/{len(runs)})")
            elif pgd < 10:  # collapsed (the check saw robustness fall), or never robust at all
                (fell if co * 2 > len(runs) else never).append((pgd, method, co, len(runs)))
            else:
                held.append((pgd, method, co, len(runs)))
                fallen = [r["final_pgd50"] for r in runs if r["co"] and r["final_pgd50"] < 10]
                if fallen:  # the mean held, but a seed collapsed: CO at the edge of its ε
                    some.append(f"{method} ({len(fallen)} of {len(runs)} seeds, to {min(fallen):.0f}%)")
        measured = len(held) + len(fell) + len(never) + len(dead)
        if not measured:
            lines.append(f"- ε = {eps:g}: not run yet")
            continue
        part = "" if measured == len(args.methods) else f" ({measured} of {len(args.methods)} methods so far)"
        fell_txt = ", ".join(f"{m} ({c}/{n} CO, {p:.0f}%)" for p, m, c, n in sorted(fell)) or "none"
        if some:
            fell_txt += f"; collapsed in some seeds: {', '.join(some)}"
        best = sorted(held, reverse=True)[:3]
        best_txt = ", ".join(f"{m} {p:.0f}%" for p, m, _, _ in best) or "none"
        never_txt = f"; never robust: {', '.join(f'{m} {p:.0f}%' for p, m, _, _ in sorted(never))}" if never else ""
        dead_txt = f"; at chance (diverged): {', '.join(dead)}" if dead else ""
        lines.append(f"- ε = {eps:g}{part}: collapsed: {fell_txt}; best final PGD-50-10: {best_txt}{never_txt}"
                     f"{dead_txt}")
    parts = []
    for kind in reversed(YARDSTICK_KINDS):
        checked = [c for c in cells.values() if c["fastat"] and c[kind]]
        if checked:
            parts.append(f"{sum(_agrees(c, kind) for c in checked)} of {len(checked)} method × ε cells agree with "
                         f"the {KIND_LABEL[kind]}")
    if parts:
        lines.append(f"- fastat vs the independent yardstick (last epoch's PGD-20 within 2 std or 5 points): "
                     f"{'; '.join(parts)}; the table below gives each cell and the reasons")
    return lines


def _matched(cell: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """fastat's runs of the seeds the yardstick (``kind``) ran too. The issue asks for the same cells and the same
    seeds: where fastat ran two seeds and the yardstick one, the mean of two against a single run with no spread
    would judge fastat by a seed-to-seed spread the yardstick never had the chance to show."""
    seeds = {r["seed"] for r in cell[kind]}
    return [r for r in cell["fastat"] if r["seed"] in seeds]


def _agrees(cell: dict[str, Any], kind: str) -> bool:
    """fastat's mean PGD-20 (last epoch) over the yardstick's seeds (`_matched`) within max(2 std, 5 points) of the
    yardstick's (``kind``)."""
    runs = _matched(cell, kind)
    if not runs:
        return False
    f = statistics.fmean(r["pgd20_last_epoch"] for r in runs)
    y, s = _mean_std([r["pgd20_last_epoch"] for r in cell[kind]])
    return abs(f - y) <= max(2 * s, 5.0)


def _verdict(cell: dict[str, Any], kind: str) -> str:
    """The table's agree column: yes / **no**, and which seeds were compared when fastat ran more."""
    word = "yes" if _agrees(cell, kind) else "**no**"
    seeds = sorted(r["seed"] for r in _matched(cell, kind))
    if len(seeds) < len(cell["fastat"]):
        word += f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
    return word


def coverage(args: argparse.Namespace, cells: dict[str, Any]) -> str:
    """How much of the plan is measured, and what the rest costs at the per-method times measured so far (per kind,
    seconds per unit of `COST`, so a method not run yet is estimated from its relative cost)."""
    done = {(kind, c["method"], c["eps"], r["seed"]): r.get("seconds", 0.0)
            for c in cells.values() for kind in ("fastat", *YARDSTICK_KINDS) for r in c[kind]}
    tasks = plan(args)
    lines = []
    left = 0.0
    for kind in ("fastat", *YARDSTICK_KINDS):
        mine = [t for t in tasks if t.kind == kind]
        fin = [t for t in mine if (kind, t.method, t.eps, t.seed) in done]
        if not mine:
            continue
        rate = (sum(done[(kind, t.method, t.eps, t.seed)] for t in fin) / sum(COST[t.method] for t in fin)
                if fin else float("nan"))
        left += sum(COST[t.method] * rate for t in mine if t not in fin)
        lines.append(f"{kind} {len(fin)} of {len(mine)}")
    finished = sum(done.values()) / 3600
    if math.isnan(left) or left == 0:
        rest = "all planned runs are measured" if left == 0 else "the cost of the rest is not known yet"
    else:
        rest = (f"the rest would take about {left / 3600:.1f} run-hours more at the per-method times measured so "
                f"far (about {left / 3600 / args.workers:.1f} h with {args.workers} at a time); the same command "
                "resumes where it stopped")
    return (f"Coverage: {', '.join(lines)} planned runs finished ({finished:.1f} run-hours); {rest}. Cells not run "
            "yet say so below.")


def markdown(args: argparse.Namespace, cells: dict[str, Any], env: dict[str, str]) -> str:
    shown = [a for a in sys.argv[1:] if a != "--report-only"]  # the command that measures, not the one that redraws
    cmd = "python bench/co_atlas.py" + (" " + " ".join(shown) if shown else "")
    out = [f"# Catastrophic-overfitting atlas (Fashion-MNIST, {args.model}, {env['device']})", "",
           f"Measured by fastat {env['commit']} on {env['date']} ({env['device']}, torch {env['torch']}, "
           f"{args.workers} runs at a "
           f"time); command: `{cmd}`. Every run: the first {args.subset or 'all'} training images, batch "
           f"{args.batch_size}, cyclic lr peak {args.lr_max:g}, {args.epochs} epochs, SGD (momentum 0.9, wd 5e-4). "
           f"Per epoch: clean and PGD-20 (α = ε/4, 1 restart) on the first {args.eval_n} test images; at the end: "
           f"PGD-50-10 (α = ε/4, max-loss accounting) of the last weights on the first {args.final_n} test images, "
           f"and of the best epoch's when its per-epoch PGD-20 beat the last epoch's by more than {BEST_MARGIN:g} "
           "points (else the last's numbers stand for both). Mean ± std over seeds (sample std; 0 for one seed). "
           "No ε warm-up: the yardstick has none, and like is compared with like (the demo ramps ε over 3 epochs "
           "at lr 0.1).", "", coverage(args, cells), "",
           "## Headline", "", *headline(args, cells), "",
           "## fastat: final and best PGD-50-10", "",
           "CO: runs the CO monitor flagged (or rolled back) / seeds; † diverged (stopped at chance level). Time: "
           "training seconds per epoch relative to FGSM-RS at the same ε (same machine, same load).", "",
           "| method | ε | final PGD-50-10 % | best PGD-50-10 % | final clean % | CO | s/epoch vs FGSM-RS |",
           "|---|---|---|---|---|---|---|"]
    for method in args.methods:
        for eps in args.eps:
            runs = cells[f"{method}@{eps:g}"]["fastat"]
            if not runs:
                out.append(f"| {method} | {eps:g} | (not run yet) | | | | |")
                continue
            base = cells.get(f"fgsm_rs@{eps:g}", {}).get("fastat") or []
            rel = (statistics.fmean(r["train_s_per_epoch"] for r in runs) /
                   statistics.fmean(r["train_s_per_epoch"] for r in base)) if base else float("nan")
            dead = sum(r["diverged"] for r in runs)
            out.append(f"| {method} | {eps:g} | {_cell([r['final_pgd50'] for r in runs])} | "
                       f"{_cell([r['best_pgd50'] for r in runs])} | {_cell([r['final_clean'] for r in runs])} | "
                       f"{sum(r['co'] for r in runs)}/{len(runs)}{f' ({dead}†)' if dead else ''} | {rel:.2f} |")
    out += ["", "## Beside the independent yardstick", "",
            "`../shared/reference/fmnist_co_sweep.py` (plain PyTorch, written without fastat) on the same cells: "
            "same data slice, batch, lr, epochs, seeds and evaluation images. Compared like with like: the "
            "last epoch's clean and PGD-20 (α = ε/4, 1 restart) accuracy on the first "
            f"{args.eval_n} test images; agree = fastat's mean PGD-20 within max(2 std, 5 points) of the "
            "yardstick's, seed for seed (fastat's runs of the seeds the yardstick ran; the fastat column shows all of "
            "fastat's seeds). The yardstick as written never projects δ onto the pixel box (its starts in training and "
            "evaluation, its PGD iterates), so its attacks leave much of Fashion-MNIST's background where the "
            "draw put it; it also runs patched to the official box projections (bench/yardstick_box.py, seven "
            "lines, the same random draws), which is what fastat implements. Training seconds per epoch measured "
            "in the same atlas run (same machine, same load). [yardstick.md](yardstick.md) measures each "
            "difference.", "",
            "| method | ε | fastat clean / PGD-20 % | yardstick as written: clean / PGD-20 % | agree | "
            "yardstick, official box: clean / PGD-20 % | agree | fastat s/epoch | yardstick s/epoch |",
            "|---|---|---|---|---|---|---|---|---|"]
    for method in args.methods:
        if method not in YARDSTICK:
            continue
        for eps in args.eps:
            c = cells[f"{method}@{eps:g}"]
            f, y = c["fastat"], c["yardstick"]
            if not f or not (y or c["yardstick_box"]):
                continue

            def pair(runs: list[dict[str, Any]]) -> str:
                return (f"{_cell([r['clean_last_epoch'] for r in runs])} / "
                        f"{_cell([r['pgd20_last_epoch'] for r in runs])}")

            versus = []
            for kind in YARDSTICK_KINDS:
                runs = c[kind]
                versus += [pair(runs), _verdict(c, kind)] if runs else ["(not run)", ""]
            out.append(f"| {method} | {eps:g} | {pair(f)} | {' | '.join(versus)} | "
                       f"{_cell([r['train_s_per_epoch'] for r in f], 2)} | "
                       f"{_cell([r['train_s_per_epoch'] for r in y], 2) if y else '–'} |")
    return "\n".join(out) + "\n"


def heatmap(args: argparse.Namespace, cells: dict[str, Any], path: Path, env: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.full((len(args.methods), len(args.eps)), np.nan)
    fig, ax = plt.subplots(figsize=(1.6 * len(args.eps) + 3, 0.55 * len(args.methods) + 1.6))
    for i, method in enumerate(args.methods):
        for j, eps in enumerate(args.eps):
            runs = cells[f"{method}@{eps:g}"]["fastat"]
            if runs:
                grid[i, j] = statistics.fmean(r["final_pgd50"] for r in runs)
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=max(50.0, float(np.nanmax(grid)) if np.isfinite(grid).any()
                                                         else 50.0), aspect="auto")
    for i, method in enumerate(args.methods):
        for j, eps in enumerate(args.eps):
            runs = cells[f"{method}@{eps:g}"]["fastat"]
            if not runs:
                ax.text(j, i, "not run", ha="center", va="center", fontsize=7, color="0.6")
                continue
            co, dead = sum(r["co"] for r in runs), sum(r["diverged"] for r in runs)
            text = f"{grid[i, j]:.0f}%" + (f"\nCO {co}/{len(runs)}" if co else "") + \
                (f"\nat chance {dead}/{len(runs)}" if dead else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if grid[i, j] < 25 else "black", fontweight="bold" if co else "normal")
    ax.set_xticks(range(len(args.eps)), [f"ε = {e:g}" for e in args.eps])
    ax.set_yticks(range(len(args.methods)), args.methods)
    ax.set_title(f"Final PGD-50-10 accuracy, Fashion-MNIST ({args.subset or 'all'} images), {args.model}, "
                 f"{args.epochs} epochs\n(CO n/m: seeds the CO monitor flagged; at chance: diverged; {env['device']}, "
                 f"{env['date']})",
                 fontsize=9)
    fig.colorbar(im, ax=ax, label="PGD-50-10 accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def environment(args: argparse.Namespace) -> dict[str, str]:
    import torch

    device = platform.processor() or platform.machine()
    if args.device.startswith("cuda") and torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        device = f"CPU ({os.cpu_count()} cores, {device})"
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"device": device, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
            "commit": commit}


KEEP = "<!-- written by hand below this line: the script keeps it when it rewrites the page -->"


def write_keeping(page: Path, text: str) -> None:
    """Write a results page: ``text``, then the marker `KEEP` and whatever a person wrote below it last time."""
    old = page.read_text() if page.is_file() else ""
    kept = old.split(KEEP, 1)[1] if KEEP in old else "\n"
    page.write_text(text.rstrip("\n") + "\n\n" + KEEP + kept)


def report(args: argparse.Namespace) -> dict[str, Any]:
    cells, env = collect(args), environment(args)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    doc = {"env": env, "settings": {k: v for k, v in vars(args).items() if k not in ("yardstick",)},
           "method_settings": METHOD_SETTINGS, "cells": cells, "headline": headline(args, cells)}
    (results / "co_atlas.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    write_keeping(results / "co_atlas.md", markdown(args, cells, env))
    heatmap(args, cells, results / "co_atlas.png", env)
    return doc
