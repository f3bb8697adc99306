"""Per-epoch metrics files of a run folder: ``metrics.jsonl`` (one JSON object per epoch or event), ``metrics.csv``
(epoch rows, columns = union of keys) and ``curves.png`` (clean / PGD accuracy per epoch); and what multi-run
drivers (``fastat sweep``, bench/acceptance.py) record per run: its identity and a summary of its epochs.

Non-finite numbers (a diverged loss) are written as ``null`` in metrics.jsonl (strict JSON) and as empty cells in
metrics.csv, like a missing key; `read_metrics` returns them as None and the plots leave such points out."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["FINISHED", "VOLATILE", "MetricsWriter", "co_epoch", "epoch_rows", "final_eval_table", "plot_curves",
           "plot_sweep", "read_json", "finite_number", "read_metrics", "run_identity", "same_run", "summarize_epochs", "sweep_aggregate", "sweep_markdown", "sweep_run_row"]

# TrainConfig fields that do not change what a run computes (where it writes, how it reports, where the data is read
# from, which GPU index): two configs equal in everything else are the same experiment.
VOLATILE = ("out", "progress", "plot", "checkpoint", "data_root", "download", "device")


class MetricsWriter:
    """Keeps the rows in memory and rewrites the files after each one (tiny files; survives resume/rollback)."""

    def __init__(self, out: str | Path, rows: list[dict[str, Any]] | None = None, *, plot: bool = True) -> None:
        self.out = Path(out)
        self.plot = plot
        self.out.mkdir(parents=True, exist_ok=True)
        import tempfile

        fd, probe = tempfile.mkstemp(dir=self.out, prefix=".write-probe-")  # OSError now, not after an epoch
        os.close(fd)
        os.unlink(probe)
        self.rows: list[dict[str, Any]] = list(rows or [])

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.flush()

    def flush(self) -> None:
        rows = [_finite_or_none(r) for r in self.rows]
        with open(self.out / "metrics.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row, allow_nan=False) + "\n")
        epochs = [r for r in rows if r.get("event", "epoch") == "epoch"]
        keys: list[str] = []
        for r in epochs:
            keys += [k for k in r if k not in keys]
        with open(self.out / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(epochs)
        if epochs and self.plot:
            try:
                plot_curves({self.out.name: rows}, self.out / "curves.png")
            except Exception:  # a plotting problem must never stop training
                pass


def _finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (nan, ±inf), also inside dicts, lists and tuples, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


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


def run_identity(config: Any) -> dict[str, Any]:
    """What makes two runs the same experiment: the `TrainConfig` (a dataclass with ``to_dict``) without the
    `VOLATILE` fields and the methods' placement hyper-parameters (ATAS ``state_device``: where a process keeps its
    state), plus the device type ("cpu" / "cuda"), JSON-normalised (tuples become lists). Compare two with
    `same_run`."""
    d = {k: v for k, v in config.to_dict().items() if k not in VOLATILE}
    device = config.resolved_device() if hasattr(config, "resolved_device") else config.device
    d["device_type"] = str(device).split(":")[0]
    return _normalised(json.loads(json.dumps(d, sort_keys=True, default=str)))


def same_run(old: Any, new: dict[str, Any], free: Any = ()) -> bool:
    """Whether a stored identity ``old`` (None, or a `run_identity` written by any fastat version) names the same
    experiment as ``new``, ignoring the keys in ``free``. A field newer than ``old`` counts at its default (the value
    that run was trained with)."""
    if not isinstance(old, dict):
        return False
    skip = set(free)
    old = {**_default_identity(), **_normalised(old)}
    new = {**_default_identity(), **new}
    return {k: v for k, v in old.items() if k not in skip} == {k: v for k, v in new.items() if k not in skip}


def _normalised(identity: dict[str, Any]) -> dict[str, Any]:
    from ..methods import without_placement

    kwargs = identity.get("method_kwargs")
    return {**identity, "method_kwargs": without_placement(kwargs)} if isinstance(kwargs, dict) else identity


def _default_identity() -> dict[str, Any]:
    """`run_identity` of the default `TrainConfig`, without the keys every identity has (method, device type)."""
    from .config import TrainConfig

    d = run_identity(TrainConfig())
    return {k: v for k, v in d.items() if k not in ("method", "method_kwargs", "device_type")}


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable (a run killed while writing it)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def summarize_epochs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Last-epoch and best-PGD-epoch numbers of a run's epoch rows (accuracies in %): epochs_done, clean, pgd,
    best_pgd, best_epoch (the first epoch with the highest PGD accuracy), train_s_per_epoch (mean training time) and
    co_epochs (epochs the CO check flagged). Empty for no rows."""
    if not rows:
        return {}
    last, best = rows[-1], max(rows, key=lambda r: r["pgd_acc"])
    return {"epochs_done": last["epoch"], "clean": 100 * last["clean_acc"], "pgd": 100 * last["pgd_acc"],
            "best_pgd": 100 * best["pgd_acc"], "best_epoch": best["epoch"],
            "train_s_per_epoch": sum(r["train_seconds"] for r in rows) / len(rows),
            "co_epochs": [r["epoch"] for r in rows if r.get("co")]}


def read_metrics(run: str | Path, *, events: bool = False) -> list[dict[str, Any]]:
    """The epoch rows of a run folder (or of a metrics.jsonl path), with ``events`` also its event rows (roll-backs,
    stops) in file order; ``null`` values (non-finite numbers) are None.

    A last line that is not valid JSON (a run stopped while rewriting the file) is skipped with a warning on stderr;
    an invalid line before it raises ValueError naming the file and the line number."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics.jsonl at {str(path)!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a metrics.jsonl (not UTF-8 text at byte {exc.start})") from None
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    rows = []
    for i, line in lines:
        try:
            row = json.loads(line)
        except ValueError as exc:
            if i == lines[-1][0]:
                print(f"fastat: warning: {path}: skipped its partial last line {i} (a run stopped while writing it?)",
                      file=sys.stderr)
                break
            raise ValueError(f"{path}: line {i} is not valid JSON ({exc})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {i} is not a JSON object")
        rows.append(row)
    return rows if events else epoch_rows(rows)


def epoch_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``rows`` that describe an epoch (not a roll-back, stop or divergence event)."""
    return [r for r in rows if r.get("event", "epoch") == "epoch"]


def co_epoch(rows: list[dict[str, Any]]) -> int | None:
    """The first epoch the CO monitor flagged in a run's rows (an epoch row with ``co``, or a roll-back event's
    ``at_epoch``), or None."""
    flagged = [r["epoch"] for r in epoch_rows(rows) if r.get("co")]
    flagged += [r["at_epoch"] for r in rows if r.get("event") == "rollback" and "at_epoch" in r]
    return min(flagged, default=None)


def plot_curves(runs: dict[str, list[dict[str, Any]]], path: str | Path, title: str | None = None) -> Path:
    """Clean (dashed) and PGD (solid) accuracy per epoch for each run, in one PNG, integer epochs. Where a run's
    rows include its events (`read_metrics(..., events=True)`), roll-backs are drawn as dotted vertical lines; each
    run's first CO epoch (`co_epoch`) is marked with an X on its PGD curve and named in its legend entry."""
    plt, fig, ax = _accuracy_figure()
    for i, (name, rows) in enumerate(runs.items()):
        color, epochs, co = f"C{i % 10}", epoch_rows(rows), co_epoch(rows)
        for key, style, what in (("pgd_acc", "-o", "PGD"), ("clean_acc", "--", "clean"),
                                 ("ema_pgd_acc", ":", "EMA PGD")):
            points = _points(epochs, key)
            label = f"{name} {what}" + (f" (CO at epoch {co})" if key == "pgd_acc" and co is not None else "")
            if points or key != "ema_pgd_acc":
                ax.plot([e for e, _ in points], [v for _, v in points], style, ms=4, color=color, label=label)
        at = dict(_points(epochs, "pgd_acc"))
        if co is not None and co in at:
            ax.plot([co], [at[co]], "X", ms=13, color=color, markeredgecolor="black", zorder=5)
        for r in rows:
            if r.get("event") == "rollback" and "at_epoch" in r:
                ax.axvline(r["at_epoch"], color=color, ls=":", lw=1.2)
    _shade_warmup(ax, [r for rows in runs.values() for r in epoch_rows(rows)])
    return _save_accuracy_figure(plt, fig, ax, path, title)


def _shade_warmup(ax, rows: list[dict[str, Any]]) -> None:
    """Grey band over the epochs trained (partly) inside an ε warm-up: those that ended with ``eps_scale`` < 1 and
    the one after each (it started below the full ε)."""
    warm = [r["epoch"] + 1 for r in rows if finite_number(r.get("eps_scale")) and r["eps_scale"] < 1]
    if warm:
        ax.axvspan(0.5, max(warm) + 0.5, color="0.5", alpha=0.12, lw=0, label="ε warm-up")


def _points(rows: list[dict[str, Any]], key: str) -> list[tuple[Any, float]]:
    """(epoch, 100 × value) of the rows whose ``key`` holds a finite number (missing, None and nan are left out)."""
    return [(r["epoch"], 100 * r[key]) for r in rows if finite_number(r.get(key))]


def finite_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not None, nan, ±inf, a string)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def _accuracy_figure():
    """(pyplot, figure, axes) for an accuracy-per-epoch plot (the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    return plt, fig, ax


def _save_accuracy_figure(plt, fig, ax, path: str | Path, title: str | None, title_size: float | None = None) -> Path:
    """Label the axes (epoch, accuracy 0-100 %), add grid, legend and title, write the PNG and close the figure."""
    import textwrap

    ax.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100))
    ax.grid(alpha=0.3)
    entries = len(ax.get_legend_handles_labels()[1])
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=min(3, max(1, entries)),
              frameon=False)  # below the axes: never over the curves
    fig.set_size_inches(7, 4.5 + 0.22 * -(-entries // 3))
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 75)), fontsize=title_size)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- sweeps
FINISHED = ("done", "resumed", "reused")  # run statuses with results (trained now or before)
_STATS = (("clean_pct", "clean %"), ("pgd_pct", "PGD %"), ("best_pgd_pct", "best PGD %"),
          ("train_s_per_epoch", "train s/epoch"))


def sweep_run_row(label: str, seed: int, method: str, folder: Path, result: dict[str, Any]) -> dict[str, Any]:
    """One summary row of a sweep run (accuracies in %): last-epoch clean/PGD, best PGD epoch, timings, CO flags,
    roll-backs and, for runs with a final evaluation, ``final_<weights>_<clean|pgd|pgd_any|aa>_pct``."""
    row: dict[str, Any] = {"method": label, "base_method": method, "seed": seed, "status": result.get("status"),
                           "epochs": result.get("epochs_done"), "clean_pct": result.get("clean"),
                           "pgd_pct": result.get("pgd"), "best_pgd_pct": result.get("best_pgd"),
                           "best_epoch": result.get("best_epoch"), "train_s_per_epoch": result.get("train_s_per_epoch"),
                           "total_s": result.get("seconds"), "co": bool(result.get("co_epochs")) if result.get("rows")
                           else None, "co_epochs": result.get("co_epochs"), "rollbacks": result.get("rollbacks"),
                           "folder": str(folder)}
    for weights, r in ((result.get("final") or {}).get("models") or {}).items():
        for key, name in (("clean_acc", "clean"), ("pgd_acc", "pgd"), ("pgd_any_acc", "pgd_any"),
                          ("autoattack_acc", "aa")):
            if key in r:
                row[f"final_{weights}_{name}_pct"] = 100 * r[key]
    return row


def _stats(values: list[float]) -> dict[str, Any]:
    import statistics

    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values)}


def sweep_aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method label, over its finished seeds: mean, sample std (None for one seed), min and max of each number
    in `_STATS` (and of the final-evaluation columns), seeds done / planned / failed, and how many runs CO flagged."""
    out = []
    for label in dict.fromkeys(r["method"] for r in rows):
        runs = [r for r in rows if r["method"] == label]
        ok = [r for r in runs if r["status"] in FINISHED]
        agg: dict[str, Any] = {"method": label, "base_method": runs[0]["base_method"], "seeds_done": len(ok),
                               "seeds_planned": len(runs), "seeds": [r["seed"] for r in ok],
                               "failed": sum(str(r["status"]).startswith("error") for r in runs),
                               "co_runs": sum(bool(r["co"]) for r in ok)}
        keys = [k for k, _ in _STATS] + sorted({k for r in ok for k in r if k.startswith("final_")})
        for key in keys:
            values = [r[key] for r in ok if r.get(key) is not None]
            if values:
                agg[key] = _stats(values)
        out.append(agg)
    return out


def sweep_markdown(head: str, methods: list[dict[str, Any]]) -> str:
    """The per-method Markdown table: mean ± std over seeds (PGD-50-10 of the last weights when evaluated)."""
    final = any("final_last_pgd_pct" in m for m in methods)
    cols = [label for _, label in _STATS] + (["PGD-50-10 % (last)"] if final else [])
    lines = [head, "", "| method | seeds | " + " | ".join(cols) + " | CO runs |", "|---" * (len(cols) + 3) + "|"]
    for m in methods:
        cells = []
        for key in [k for k, _ in _STATS] + (["final_last_pgd_pct"] if final else []):
            s, d = m.get(key), 2 if key == "train_s_per_epoch" else 1
            std = "" if s is None or s["std"] is None else f" ± {s['std']:.{d}f}"
            cells.append("" if s is None else f"{s['mean']:.{d}f}{std}")
        n = f"{m['seeds_done']}/{m['seeds_planned']}" + (f" ({m['failed']} failed)" if m["failed"] else "")
        lines.append(f"| {m['method']} | {n} | " + " | ".join(cells) + f" | {m['co_runs']} |")
    return "\n".join(lines)


def plot_sweep(curves: dict[str, list[list[dict[str, Any]]]], path: str | Path, title: str | None = None) -> Path:
    """Per method: mean PGD (solid) and clean (dashed) accuracy per epoch over its seeds' epoch rows, each with a
    min-max band; an epoch's mean is over the seeds that reached it."""
    plt, fig, ax = _accuracy_figure()
    for i, (label, runs) in enumerate(curves.items()):
        epochs = sorted({r["epoch"] for rows in runs for r in rows})
        for key, style, band, name in (("pgd_acc", "-o", 0.18, "PGD"), ("clean_acc", "--", 0.08, "clean")):
            per = {e: [v for rows in runs for ep, v in _points(rows, key) if ep == e] for e in epochs}
            xs = [e for e in epochs if per[e]]
            ax.plot(xs, [sum(per[e]) / len(per[e]) for e in xs], style, ms=3, color=f"C{i % 10}",
                    label=f"{label} {name} (n={len(runs)})")
            ax.fill_between(xs, [min(per[e]) for e in xs], [max(per[e]) for e in xs], color=f"C{i % 10}",
                            alpha=band, lw=0)
    return _save_accuracy_figure(plt, fig, ax, path, title, title_size=9)
