"""The catastrophic-overfitting atlas: fastat's methods × ε × seeds on Fashion-MNIST at CPU scale, with the
independent plain-PyTorch yardstick (../shared/reference/fmnist_co_sweep.py) run on the same cells beside it.

One command, resumable (a finished run is never re-run; a killed one resumes from its checkpoint):

    python bench/co_atlas.py                        # the CPU atlas (hours on 2 cores), docs/results/co_atlas.*
    python bench/co_atlas.py --report-only          # redraw the page from the finished runs

Each fastat run trains with `fastat.train.Trainer` (via `fastat.train.sweeps.train_run`) on the cell's setting (the
CPU demo's: small CNN, the first ``--subset`` training images, batch ``--batch-size``, cyclic lr peak ``--lr-max``,
``--epochs`` epochs, fp32), evaluates clean and PGD-20 accuracy (α = ε/4, one restart, the yardstick's evaluation) on
the first ``--eval-n`` test images after every epoch, and ends with PGD-50-10 (α = ε/4, official max-loss accounting)
of its last weights on the first ``--final-n`` test images, and of its best epoch's when that epoch beat the last
(`final_evaluation`). The demo's ε runs first, then the others seed-major: a cut-short atlas still covers every cell. Method settings for Fashion-MNIST
(`METHOD_SETTINGS`, the same as bench/acceptance.py's): ZeroGrad q = 0.7 with the CO roll-back, ATAS's official
absolute step bounds with c scaled to the batch and a 2-epoch warm-up, GradAlign λ = 2; the rest official defaults.

The yardstick runs its methods (fgsm, fgsmrs, nfgsm, zerograd, multigrad, atas, pgd) on the same cells (same data
slice, batch, lr, epochs, seeds, evaluation images) in a subprocess each, unless ``--no-yardstick``: as written, and
for `BOX_METHODS` also patched to the official box projections (bench/yardstick_box.py; the script as written never
projects δ onto the pixel box, which weakens its attacks on Fashion-MNIST's background). Runs share ``--workers``
processes (one thread each by default), longest first.

Outputs (``--results``, default docs/results): co_atlas.md (the tables, the command, device and date), co_atlas.png
(heat map: method × ε, colour = final PGD-50-10, CO counts written in), co_atlas.json (every number). Run folders in
``--runs`` (default runs/co_atlas). GPU version: the same command with ``--device cuda --model preact18 --subset 0
--batch-size 512 --lr-max 0.2 --eval-n 2000 --no-yardstick`` (see docs/results/co_atlas.md).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
try:
    import fastat  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path[:0] = [str(REPO / "python"), str(REPO)]
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))
import yardstick_box  # noqa: E402  (the yardstick patched to the official box projections)

METHODS = ("fgsm", "fgsm_rs", "n_fgsm", "zerograd", "multigrad", "atas", "gradalign", "apart", "pgd", "nuat", "sora",
           "fgsm_pgi")
# Fashion-MNIST settings that differ from the official CIFAR defaults (why: bench/acceptance.py's docstring)
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "zerograd": {"q": 0.7, "on_co": "rollback", "co_drop": 0.1},
    "atas": {"warmup_epochs": 2},  # c: 0.01 · 128 / batch, set in `fastat_config`
    "gradalign": {"lam": 2.0},
}
# the yardstick's spelling of the same method and settings: (name, α / ε, extra parameter)
YARDSTICK = {"fgsm": ("fgsm", 1.0, None), "fgsm_rs": ("fgsmrs", 1.25, None), "n_fgsm": ("nfgsm", 1.0, 2),
             "zerograd": ("zerograd", 2.0, 0.7), "multigrad": ("multigrad", 2.0, 3), "pgd": ("pgd", 0.25, 10),
             "atas": ("atas", 2.0, 0.01)}
# training cost per step relative to FGSM-RS on the CPU (longest first; also the rough per-run estimate)
COST = {"fgsm": 1.0, "fgsm_rs": 1.0, "n_fgsm": 1.0, "atas": 1.05, "zerograd": 1.4, "apart": 1.5, "multigrad": 2.0,
        "gradalign": 3.0, "pgd": 5.5, "sora": 1.0, "nuat": 1.6,
        "fgsm_pgi": 1.4}
YARDSTICK_PATH = REPO.parent / "shared" / "reference" / "fmnist_co_sweep.py"
# the yardstick's methods also run patched to the official box projections (bench/yardstick_box.py): those whose
# starts or iterates it leaves unprojected and that cost one or two passes (PGD-10 costs 5.5; ATAS is the script's
# simplified one, a different method either way)
BOX_METHODS = ("fgsm", "fgsm_rs", "n_fgsm", "zerograd", "multigrad")
YARDSTICK_KINDS = ("yardstick", "yardstick_box")
KIND_LABEL = {"fastat": "fastat", "yardstick": "yardstick (as written)",
              "yardstick_box": "yardstick (official box projections)"}


class Task(NamedTuple):
    kind: str          # "fastat", "yardstick" or "yardstick_box" (`KIND_LABEL`)
    method: str        # fastat's name
    eps: float
    seed: int
    cost: float = 1.0  # relative, orders the runs

    @property
    def name(self) -> str:
        return f"{self.method}-s{self.seed}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS), help="comma list (default: all twelve)")
    p.add_argument("--eps", default="0.1,0.2,0.25,0.3", help="comma list of ε values (0.25: the CPU demo's)")
    p.add_argument("--demo-eps", type=float, default=0.25, help="the ε that gets --demo-seeds (the CPU demo's)")
    p.add_argument("--demo-seeds", type=int, default=3)
    p.add_argument("--seeds", type=int, default=2, help="seeds at the other ε values")
    p.add_argument("--yardstick-seeds", type=int, default=1,
                   help="yardstick seeds at the other ε values (the demo's ε gets all --demo-seeds); default 1")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="small-cnn")
    p.add_argument("--subset", type=int, default=5000, help="first N training images (0: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr-max", type=float, default=0.05,
                   help="cyclic peak (default: the recipe's for the small CNN at batch 64)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--eval-n", type=int, default=500, help="test images for the per-epoch PGD-20 (and yardstick)")
    p.add_argument("--final-n", type=int, default=1000, help="test images for the final PGD-50-10")
    p.add_argument("--precision", default=None, help="default: fp32 on the CPU, bf16 on CUDA")
    p.add_argument("--workers", type=int, default=2, help="parallel runs (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores / workers)")
    p.add_argument("--runs", default="runs/co_atlas", help="run folders")
    p.add_argument("--results", default=str(REPO / "docs" / "results"), help="where co_atlas.{md,png,json} go")
    p.add_argument("--yardstick", default=str(YARDSTICK_PATH), help="path of fmnist_co_sweep.py")
    p.add_argument("--no-yardstick", action="store_true", help="fastat's runs only")
    p.add_argument("--report-only", action="store_true", help="train nothing; write the page from finished runs")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = sorted(set(args.methods) - set(METHODS))
    if bad:
        p.error(f"--methods: unknown {', '.join(bad)}; choose from {', '.join(METHODS)}")
    try:
        args.eps = [float(e) for e in args.eps.split(",")]
    except ValueError:
        p.error(f"--eps: expected comma-separated numbers, got {args.eps!r}")
    if args.workers < 1:
        p.error("--workers must be >= 1")
    if not args.no_yardstick and not args.report_only and not Path(args.yardstick).is_file():
        p.error(f"--yardstick {args.yardstick!r} is not a file (pass --no-yardstick to run fastat alone)")
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.workers)
    return args


def seeds_at(args: argparse.Namespace, eps: float) -> list[int]:
    return list(range(args.demo_seeds if abs(eps - args.demo_eps) < 1e-9 else args.seeds))


def yardstick_seeds_at(args: argparse.Namespace, eps: float) -> list[int]:
    """The yardstick checks every seed at the demo's ε and the first ``--yardstick-seeds`` elsewhere: it is the
    comparison, not the measurement, and its runs cost as much as fastat's (a third of the atlas's time)."""
    seeds = seeds_at(args, eps)
    return seeds if abs(eps - args.demo_eps) < 1e-9 else seeds[:args.yardstick_seeds]


def plan(args: argparse.Namespace) -> list[Task]:
    """Every run of the atlas, the most expensive first (so the workers end together)."""
    tasks = []
    for eps in args.eps:
        for seed in seeds_at(args, eps):
            for method in args.methods:
                tasks.append(Task("fastat", method, eps, seed, COST[method] * 1.3))  # + the final evaluation
                if not args.no_yardstick and method in YARDSTICK and seed in yardstick_seeds_at(args, eps):
                    tasks.append(Task("yardstick", method, eps, seed, COST[method]))
                    if method in BOX_METHODS:
                        tasks.append(Task("yardstick_box", method, eps, seed, COST[method]))
    # the demo's ε first (all its seeds), then seed-major (every other cell gets its first seed before any gets its
    # second), within a seed the cheap methods at every ε before the expensive ones (MultiGrad, GradAlign, PGD),
    # longest first: an atlas cut short still holds the demo's row and the main methods' first seed everywhere
    def key(t: Task) -> tuple:
        demo = abs(t.eps - args.demo_eps) < 1e-9
        return (not demo, 0 if demo else t.seed, COST[t.method] >= 2, t.eps, -t.cost)

    return sorted(tasks, key=key)


def run_dir(args: argparse.Namespace, task: Task) -> Path:
    return Path(args.runs) / task.kind / f"eps{task.eps:g}" / task.name


def fastat_config(args: argparse.Namespace, task: Task):
    from fastat.train import TrainConfig
    from fastat.train.sweeps import split_overrides

    settings = dict(METHOD_SETTINGS.get(task.method, {}))
    if task.method == "atas":
        settings["c"] = 0.01 * 128 / args.batch_size  # g carries 1/B; the official c is tuned for B = 128
    fields, method_kwargs = split_overrides(settings)
    precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    return TrainConfig(method=task.method, dataset="fashion-mnist", eps=task.eps, epochs=args.epochs,
                       model=args.model, batch_size=args.batch_size, subset=args.subset or None,
                       lr_max=args.lr_max, precision=precision, device=args.device, seed=task.seed,
                       eval_n=args.eval_n, eval_steps=20, eval_restarts=1, final_eval="none",
                       progress=False, plot=False, method_kwargs=method_kwargs, **fields)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_task(args: argparse.Namespace, task: Task) -> tuple[Task, str]:
    """Train one run (or reuse it when finished); returns (task, one-line status)."""
    folder = run_dir(args, task)
    t0 = time.perf_counter()
    try:
        if task.kind == "fastat":
            from fastat.train.records import run_identity
            from fastat.train.sweeps import finished_result, train_run

            cfg = fastat_config(args, task)
            res = finished_result(folder, run_identity(cfg))
            before = res is not None and (folder / FINAL).is_file()
            if res is None:
                res = train_run(task.method, cfg, folder, move_unfinished=False, resume_free=("final_eval", "final_n"))
            final = final_evaluation(args, task, folder, res)["last"]
            return task, ("finished before" if before else
                          f"{time.perf_counter() - t0:.0f} s, last epoch {res.get('clean', 0):.1f} / "
                          f"{res.get('pgd', 0):.1f} %, PGD-50-10 {final['pgd_acc']:.1f} %")
        out = folder / "co_fmnist.json"
        if out.is_file():
            return task, "finished before"
        folder.mkdir(parents=True, exist_ok=True)
        name, alpha_mult, extra = YARDSTICK[task.method]
        spec = f"{name}:{task.eps:g}:{alpha_mult:g}" + ("" if extra is None else f":{extra:g}")
        env = {**os.environ, "DEV": "cpu" if args.device == "cpu" else "cuda", "MODEL": "small" if
               args.model == "small-cnn" else "prn18", "B": str(args.batch_size), "LR": str(args.lr_max),
               "EVAL_N": str(args.eval_n), "SEED": str(task.seed), "OUT": str(folder),
               "OMP_NUM_THREADS": str(args.threads)}
        if args.subset:
            env["N"] = str(args.subset)
        from fastat.data.datasets import default_fashion_mnist_root

        env.setdefault("FMNIST_ROOT", str(default_fashion_mnist_root()))
        script = args.yardstick if task.kind == "yardstick" else box_script(args)
        proc = subprocess.run([sys.executable, str(script), str(args.epochs), spec], env=env, text=True,
                              capture_output=True)
        if proc.returncode:
            return task, f"yardstick failed ({proc.returncode}): {(proc.stderr.strip().splitlines() or [''])[-1]}"
        (result,) = json.loads(out.read_text())
        clean, pgd = result["hist"][-1]
        return task, f"{time.perf_counter() - t0:.0f} s, last epoch {clean:.1f} / {pgd:.1f} %"
    except Exception as exc:  # noqa: BLE001 - one failed run must not stop the atlas
        return task, f"failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def box_script(args: argparse.Namespace) -> Path:
    """The yardstick patched to the official box projections, kept beside the runs (written by `main`)."""
    return Path(args.runs) / "yardstick_box.py"


FINAL = "atlas_final.json"
BEST_MARGIN = 2.0  # points of per-epoch PGD-20 by which the best epoch must beat the last to be evaluated apart


def final_evaluation(args: argparse.Namespace, task: Task, folder: Path, res: dict[str, Any]) -> dict[str, Any]:
    """PGD-50-10 (α = ε/4, max-loss accounting, seed 0) on the first ``final_n`` test images of the last weights
    (``checkpoint.pt``) and of the best epoch's (``best.pt``) — the latter only when the best epoch beat the last by
    more than `BEST_MARGIN` points of per-epoch PGD-20 (else the last's numbers stand for both: a robust model costs
    500 input-gradient passes per image, about 5 minutes per model on one core here). Written to ``FINAL`` in the run
    folder; reused when there."""
    import torch

    from fastat.checkpoint import load_checkpoint, model_from_checkpoint
    from fastat.data import load_dataset_cached
    from fastat.eval import pgd_robustness
    from fastat.train.records import read_json

    done = read_json(folder / FINAL)
    if isinstance(done, dict) and done.get("n") == args.final_n:
        return done
    test = load_dataset_cached("fashion-mnist", None, "test")
    x, y = test.images[:args.final_n].float().div(255), test.labels[:args.final_n].long()
    device = torch.device(args.device)

    def evaluate(path: Path) -> dict[str, Any]:
        ck = load_checkpoint(path)
        model = model_from_checkpoint(ck).to(device)
        r = pgd_robustness(model, x.to(device), y.to(device), task.eps, task.eps / 4, steps=50, restarts=10, seed=0)
        return {"epoch": int(ck["epoch"]), "clean_acc": 100 * r.clean_acc, "pgd_acc": 100 * r.robust_acc_max_loss,
                "pgd_any_acc": 100 * r.robust_acc_any, "seconds": r.seconds}

    out: dict[str, Any] = {"n": args.final_n, "steps": 50, "restarts": 10, "alpha": "eps/4",
                           "last": evaluate(folder / "checkpoint.pt")}
    rows = res.get("rows") or []
    best_row = max(rows, key=lambda r: r["pgd_acc"], default=None)
    last_row = rows[-1] if rows else None
    if best_row is not None and (folder / "best.pt").is_file() and best_row["epoch"] != last_row["epoch"] and \
            100 * (best_row["pgd_acc"] - last_row["pgd_acc"]) > BEST_MARGIN:
        out["best"] = evaluate(folder / "best.pt")
    else:
        out["best"] = {**out["last"], "same_as_last": True}
    (folder / FINAL).write_text(json.dumps(out, indent=1) + "\n")
    return out


# ---------------------------------------------------------------------------------------------- the report
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
        held, fell, never, dead = [], [], [], []
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
        measured = len(held) + len(fell) + len(never) + len(dead)
        if not measured:
            lines.append(f"- ε = {eps:g}: not run yet")
            continue
        part = "" if measured == len(args.methods) else f" ({measured} of {len(args.methods)} methods so far)"
        fell_txt = ", ".join(f"{m} ({c}/{n} CO, {p:.0f}%)" for p, m, c, n in sorted(fell)) or "none"
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


def _agrees(cell: dict[str, Any], kind: str = "yardstick") -> bool:
    """fastat's mean PGD-20 (last epoch) within max(2 std, 5 points) of the yardstick's (``kind``)."""
    f = statistics.fmean(r["pgd20_last_epoch"] for r in cell["fastat"])
    y, s = _mean_std([r["pgd20_last_epoch"] for r in cell[kind]])
    return abs(f - y) <= max(2 * s, 5.0)


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
            "yardstick's. The yardstick as written never projects δ onto the pixel box (its starts in training and "
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
                versus += [pair(runs), "yes" if _agrees(c, kind) else "**no**"] if runs else ["(not run)", ""]
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.report_only:
        tasks = plan(args)
        if any(t.kind == "yardstick_box" for t in tasks):
            try:
                yardstick_box.write_patched(Path(args.yardstick), box_script(args))
            except (OSError, yardstick_box.PatchError) as exc:
                print(f"co_atlas: {exc}", file=sys.stderr)
                return 2
        t0, failed = time.perf_counter(), 0
        print(f"co_atlas: {len(tasks)} runs on {args.workers} workers x {args.threads} threads", flush=True)
        with contextlib.ExitStack() as stack:
            if args.workers == 1:  # in this process
                _init_worker(args.threads)
                done = map(functools.partial(run_task, args), tasks)
            else:
                pool = stack.enter_context(mp.get_context("spawn").Pool(args.workers, initializer=_init_worker,
                                                                        initargs=(args.threads,)))
                done = pool.imap_unordered(functools.partial(run_task, args), tasks)
            for i, (task, status) in enumerate(done, 1):
                failed += status.startswith(("failed", "yardstick failed"))
                print(f"[{i}/{len(tasks)}] {task.kind} eps={task.eps:g} {task.name}: {status} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
                report(args)
    doc = report(args)
    print("\n".join(doc["headline"]))
    print(f"wrote {Path(args.results) / 'co_atlas'}.{{md,png,json}}")
    return 1 if not args.report_only and failed else 0


if __name__ == "__main__":
    sys.exit(main())
