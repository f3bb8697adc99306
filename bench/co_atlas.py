"""The catastrophic-overfitting atlas: fastat's methods × ε × seeds on Fashion-MNIST at CPU scale, with the
independent plain-PyTorch yardstick (../shared/reference/fmnist_co_sweep.py) run on the same cells beside it.

One command, resumable (a finished run is never re-run; a killed one resumes from its checkpoint):

    python bench/co_atlas.py                        # the CPU atlas, docs/results/co_atlas.*; the issue's nine methods
                                                    # (81 runs) take about 3.2 hours on 2 idle cores, the frontier
                                                    # methods and the yardstick's runs add to that
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
(heat map: method × ε, colour = final PGD-50-10, CO counts written in), co_atlas.json (every number), written by
bench/co_atlas_report.py (this file plans and runs; that one reads the run folders and draws). Run folders in
``--runs`` (default runs/co_atlas). GPU version: the same command with ``--device cuda --model preact18 --subset 0
--batch-size 512 --lr-max 0.2 --eval-n 2000 --no-yardstick`` (see docs/results/co_atlas.md).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing as mp
import os
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
        cmd, env = yardstick_call(args, task, folder)
        proc = subprocess.run(cmd, env=env, text=True, capture_output=True)
        if proc.returncode:
            return task, f"yardstick failed ({proc.returncode}): {(proc.stderr.strip().splitlines() or [''])[-1]}"
        (result,) = json.loads(out.read_text())
        clean, pgd = result["hist"][-1]
        return task, f"{time.perf_counter() - t0:.0f} s, last epoch {clean:.1f} / {pgd:.1f} %"
    except Exception as exc:  # noqa: BLE001 - one failed run must not stop the atlas
        return task, f"failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def yardstick_call(args: argparse.Namespace, task: Task, out: Path,
                   base_env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The yardstick's command line and environment for ``task`` (kind "yardstick" or "yardstick_box") on the
    atlas's cell ``args``, writing its co_fmnist.json to ``out``; ``base_env`` (default: this process's) is
    extended."""
    from fastat.data.datasets import default_fashion_mnist_root

    name, alpha_mult, extra = YARDSTICK[task.method]
    spec = f"{name}:{task.eps:g}:{alpha_mult:g}" + ("" if extra is None else f":{extra:g}")
    env = {**(os.environ if base_env is None else base_env), "DEV": "cpu" if args.device == "cpu" else "cuda",
           "MODEL": "small" if args.model == "small-cnn" else "prn18", "B": str(args.batch_size),
           "LR": str(args.lr_max), "EVAL_N": str(args.eval_n), "SEED": str(task.seed), "OUT": str(out),
           "OMP_NUM_THREADS": str(args.threads)}
    if args.subset:
        env["N"] = str(args.subset)
    env.setdefault("FMNIST_ROOT", str(default_fashion_mnist_root()))
    script = args.yardstick if task.kind == "yardstick" else box_script(args)
    return [sys.executable, str(script), str(args.epochs), spec], env


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

    from fastat._malloc import tune_for
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
    tune_for(device)  # as the trainer does; a resumed run's evaluation has no trainer in its process

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


def main(argv: list[str] | None = None) -> int:
    import co_atlas_report as page

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
                page.report(args)
    doc = page.report(args)
    print("\n".join(doc["headline"]))
    print(f"wrote {Path(args.results) / 'co_atlas'}.{{md,png,json}}")
    return 1 if not args.report_only and failed else 0


if __name__ == "__main__":
    sys.exit(main())
