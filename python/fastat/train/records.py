"""Per-epoch metrics files of a run folder: ``metrics.jsonl`` (one JSON object per epoch or event), ``metrics.csv``
(epoch rows, columns = union of keys) and ``curves.png`` (clean / PGD accuracy per epoch)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

__all__ = ["MetricsWriter", "final_eval_table", "plot_curves", "read_metrics"]


class MetricsWriter:
    """Keeps the rows in memory and rewrites the files after each one (tiny files; survives resume/rollback)."""

    def __init__(self, out: str | Path, rows: list[dict[str, Any]] | None = None, *, plot: bool = True) -> None:
        self.out = Path(out)
        self.plot = plot
        self.out.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = list(rows or [])

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.flush()

    def flush(self) -> None:
        with open(self.out / "metrics.jsonl", "w") as f:
            for row in self.rows:
                f.write(json.dumps(row) + "\n")
        epochs = [r for r in self.rows if r.get("event", "epoch") == "epoch"]
        keys: list[str] = []
        for r in epochs:
            keys += [k for k in r if k not in keys]
        with open(self.out / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(epochs)
        if epochs and self.plot:
            try:
                plot_curves({self.out.name: epochs}, self.out / "curves.png")
            except Exception:  # a plotting problem must never stop training
                pass


def final_eval_table(reports: dict[str, dict[str, Any]]) -> str:
    """A text table of `Trainer.final_evaluation` reports (``final_eval.json``), keyed by run name: one row per run
    and evaluated weights (last, best, EMA), accuracies in %."""
    aa = any("autoattack_acc" in r for report in reports.values() for r in report["models"].values())
    w = max(3, *(len(name) for name in reports))
    lines = [f"{'run':<{w}} {'weights':8s} {'epoch':>5s} {'clean %':>8s} {'PGD %':>8s} {'PGD any %':>10s}"
             + (f" {'AutoAttack %':>13s}" if aa else "") + "  final eval"]
    for name, report in reports.items():
        tag = f"PGD-{report['steps']}-{report['restarts']}, n={report['n']}"
        for weights, r in report["models"].items():
            line = (f"{name:<{w}} {weights:8s} {r['epoch']:5d} {100 * r['clean_acc']:8.2f} {100 * r['pgd_acc']:8.2f} "
                    f"{100 * r['pgd_any_acc']:10.2f}")
            if aa:
                line += f" {100 * r['autoattack_acc']:13.2f}" if "autoattack_acc" in r else f" {'-':>13s}"
            lines.append(f"{line}  {tag}")
    return "\n".join(lines)


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The epoch rows of a run folder (or of a metrics.jsonl path)."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics.jsonl at {str(path)!r}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("event", "epoch") == "epoch"]


def plot_curves(runs: dict[str, list[dict[str, Any]]], path: str | Path, title: str | None = None) -> Path:
    """Clean (dashed) and PGD (solid) accuracy per epoch for each run, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, rows) in enumerate(runs.items()):
        color = f"C{i}"
        ep = [r["epoch"] for r in rows]
        ax.plot(ep, [100 * r["pgd_acc"] for r in rows], "-o", color=color, label=f"{name} PGD")
        ax.plot(ep, [100 * r["clean_acc"] for r in rows], "--", color=color, label=f"{name} clean")
        if any("ema_pgd_acc" in r for r in rows):
            ax.plot(ep, [100 * r.get("ema_pgd_acc", float("nan")) for r in rows], ":", color=color,
                    label=f"{name} EMA PGD")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
