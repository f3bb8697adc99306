"""Per-training-step time of every method: gpu-baseline.md's "Per-step cost" table, and its targets "ZeroGrad and ATAS
training steps within 1 % of the FGSM-RS step; MultiGrad S=3 step ≤ 1.6× FGSM-RS at B = 512".

Setting: PreActResNet-18 on random data, CIFAR-sized 32×32×3 (ε = 8/255, crop pad 4 + flips in BatchInfo, CIFAR-10
normalisation inside the model; the baseline's shape) and optionally Fashion-MNIST-sized 28×28×1 (ε = 0.2, no
augmentation); bf16 autocast, channels_last and cudnn.benchmark on CUDA; SGD (momentum 0.9, wd 5e-4) with the
cyclic schedule; batch sizes 512 and 128. Methods at their defaults (ZeroGrad q = 0.7 and GradAlign λ = 2 on the
Fashion-MNIST shape, as bench/acceptance.py; ATAS timed in its adaptive phase, after warm-up), plus "clean" (x_adv = x)
and PGD-2 AT ("pgd2"); `--hp label.key=value` changes one.

The step is the trainer's own: a `fastat.train.Trainer` per case (built on the given model; its Fashion-MNIST
loader and evaluation slice are loaded but unused) runs `Trainer.step`, the per-batch step of `Trainer.train_epoch`:
`Trainer._step` (x_adv = method.perturb under autocast, CE(model(x_adv).float(), y) + extra_loss, zero_grad, backward,
SGD step + APART's scalar optimiser, the device-side epoch sums), then the lr-schedule steps; with --modes graph the
same call replays `_step` from a CUDA graph (3 eager warm-up steps, then the whole step captured once and replayed;
needs --warmup >= 4); --modes compile builds the Trainer with ``compile="default"`` (`torch.compile` of the model:
the attack and the training forward/backward; dynamo is reset before each such case and the compilation happens in
the warm-up steps, so it needs --warmup >= 2). "clean" is the same step with a method whose x_adv is x. Not included: the
loader's gather (batches are pre-built), tqdm.

Timing: per step, CUDA events around it (no host sync in between; one at the end), after --warmup steps; median of
--steps steps (a case stops early after --max-case-seconds, keeping at least 5). On the CPU: perf_counter per step.
--backend takes a comma list (native, triton, torch, auto; each a `fastat.ops.use_backend` scope), so fused and
pure-PyTorch ops are compared in one run.

Output in --out (default $OUT/steps, else bench/results/steps-<date>): steps.{csv,json,md} with ratios to the FGSM-RS
and clean steps of the same shape, batch, backend and mode (graph rows also: speed-up over eager), the device,
torch/triton versions and the date, rewritten after each block; the Markdown tables and the target lines are printed
last. --budget S skips the cases that would start after S seconds. Exit code 1 if a case crashed, 2 on bad arguments.

GPU:       python bench/bench_steps.py --shapes cifar,fmnist --backend auto,torch --budget 500
           (add --modes eager,graph for the whole-step capture targets, compile for torch.compile(model))
CPU smoke: python bench/bench_steps.py --device cpu --model small-cnn --model-kwarg width=4 --batch-sizes 8 \\
               --steps 2 --warmup 1 --out /tmp/steps
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import gc
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
try:
    import fastat  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path[:0] = [str(REPO / "python"), str(REPO)]

import fastat.ops as fops
import torch
from fastat.batch import BatchInfo
from fastat.data import FASHION_MNIST_ROOT, SPECS
from fastat.methods import Method
from fastat.models import build_model
from fastat.ops._dispatch import auto_order
from fastat.ops._schemas import RANDOM_OPS
from fastat.train import TrainConfig, Trainer, parse_value

# shape name -> (C, H, W, ε, crop pad, flips, dataset whose normalisation the model uses)
SHAPES = {"cifar": (3, 32, 32, 8 / 255, 4, True, "cifar10"), "fmnist": (1, 28, 28, 0.2, 0, False, "fashion-mnist")}
METHODS = ("clean", "fgsm", "fgsm_rs", "n_fgsm", "zerograd", "multigrad", "atas", "gradalign", "apart", "pgd2=pgd",
           "pgd")
PRESET = {"pgd2": {"steps": 2}}
SHAPE_HP = {"fmnist": {"zerograd": {"q": 0.7}, "gradalign": {"lam": 2.0}}}
FGSM_FAMILY = ("fgsm", "fgsm_rs", "n_fgsm", "zerograd", "multigrad", "atas", "gradalign", "apart")
N_BATCHES = 4  # distinct pre-built batches cycled through (different indices for the per-example buffers)


class Clean(Method):
    """No attack: x_adv = x (the clean training step)."""

    name = "clean"

    def perturb(self, model, x, y, batch=None):
        return x


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="preact18")
    p.add_argument("--model-kwarg", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--shapes", default="cifar", help="comma list of cifar (32x32x3), fmnist (28x28x1)")
    p.add_argument("--batch-sizes", default="512,128")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of methods, 'clean', or label=method")
    p.add_argument("--hp", action="append", default=[], metavar="LABEL.KEY=VALUE")
    p.add_argument("--backend", default="auto,torch", help="comma list of native, triton, torch, auto")
    p.add_argument("--modes", default="eager",
                   help="comma list of eager, graph (CUDA-graph step; CUDA only), compile (torch.compile(model))")
    p.add_argument("--precision", default=None, choices=["bf16", "fp32"], help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--max-case-seconds", type=float, default=5.0)
    p.add_argument("--budget", type=float, default=None, help="seconds; later cases are skipped")
    p.add_argument("--no-cudnn-benchmark", action="store_true")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder (the Trainer loads it; unused)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def hp_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for text in args.hp:
        key, sep, value = text.partition("=")
        label, dot, field = key.strip().partition(".")
        if not sep or not dot:
            raise ValueError(f"--hp: expected LABEL.KEY=VALUE, got {text!r}")
        out.setdefault(label, {})[field] = parse_value(value)
    return out


def backend_problems(name: str, device: torch.device) -> list[str]:
    """Why ``name`` cannot run here (under "triton", the random ops have no kernel by design and follow "auto")."""
    ops = [op for op in fops.SCHEMAS if name != "auto" and not (name == "triton" and op in RANDOM_OPS)]
    return sorted({r for op in ops for r in fops.not_supported_reasons(name, op, device)})


def auto_choice(device: torch.device) -> dict[str, str]:
    """Which backend "auto" runs each op with here (the first in fastat's auto order without reasons)."""
    return {op: next((b for b in auto_order(op, device.type) if not fops.not_supported_reasons(b, op, device)),
                     "torch") for op in fops.SCHEMAS}


def make_batches(shape: str, b: int, device: torch.device, channels_last: bool, gen: torch.Generator):
    c, h, w, _, pad, flip, _ = SHAPES[shape]
    n = N_BATCHES * b
    perm = torch.randperm(n, generator=gen)
    batches = []
    for i in range(N_BATCHES):
        x = torch.rand(b, c, h, w, generator=gen).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (b,), generator=gen).to(device)
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen).to(device) if pad else None
        flips = torch.randint(0, 2, (b,), generator=gen).bool().to(device) if flip else None
        info = BatchInfo(index=perm[i * b:(i + 1) * b].to(device), num_examples=n, pad=pad, offsets=offsets,
                         flips=flips, epoch=6)  # epoch 6: past ATAS's warm-up (5 epochs), its adaptive step
        batches.append((x, y, info))
    return batches


def _mark(cuda: bool) -> Any:
    """A point in time: a CUDA event recorded on the stream (no host sync), else perf_counter."""
    if not cuda:
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def time_case(step, batches, warmup: int, steps: int, max_seconds: float, device: torch.device) -> list[float]:
    """Milliseconds of each timed step, after ``warmup`` steps; stops after max_seconds, keeping at least 5."""
    cuda = device.type == "cuda"
    for i in range(warmup):
        step(*batches[i % len(batches)])
    if cuda:
        torch.cuda.synchronize(device)
    spans, t0 = [], time.perf_counter()
    for i in range(steps):
        start = _mark(cuda)
        step(*batches[i % len(batches)])
        spans.append((start, _mark(cuda)))
        if i + 1 >= min(5, steps) and time.perf_counter() - t0 > max_seconds:
            break
    if cuda:
        torch.cuda.synchronize(device)
    return [s.elapsed_time(e) if cuda else 1e3 * (e - s) for s, e in spans]


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def add_ratios(rows: list[dict[str, Any]]) -> None:
    ms = {(r["shape"], r["batch"], r["backend"], r["mode"], r["method"]): r["median_ms"] for r in rows}
    for r in rows:
        key = (r["shape"], r["batch"], r["backend"], r["mode"])
        for name, base in (("vs_fgsm_rs", "fgsm_rs"), ("vs_clean", "clean")):
            d = ms.get((*key, base))
            r[name] = r["median_ms"] / d if d and r["median_ms"] else None
        eager = ms.get((r["shape"], r["batch"], r["backend"], "eager", r["method"]))
        r["vs_eager"] = eager / r["median_ms"] if r["mode"] != "eager" and eager and r["median_ms"] else None


def target_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        where = f"{r['method']} {r['shape']} B={r['batch']} {r['backend']} {r['mode']}"
        if r["vs_fgsm_rs"] is not None and r["mode"] == "eager":
            goal = 1.01 if r["method"] in ("zerograd", "atas") else \
                1.6 if (r["method"] == "multigrad" and r["batch"] == 512) else None
            if goal is not None:
                ok = "met" if r["vs_fgsm_rs"] <= goal else "MISSED"
                lines.append(f"- {where}: {r['vs_fgsm_rs']:.3f}× FGSM-RS (target ≤ {goal}×) {ok}")
        goal = {128: 3.0, 512: 1.2}.get(r["batch"])
        if r["mode"] == "graph" and r["vs_eager"] is not None and goal and r["method"] in FGSM_FAMILY:
            ok = "met" if r["vs_eager"] >= goal else "MISSED"
            lines.append(f"- {where}: {r['vs_eager']:.2f}× faster than eager (target ≥ {goal}×) {ok}")
    return lines


def markdown(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    head = (f"Measured {env['date']} on {env['device']} (torch {env['torch']}, triton {env.get('triton', '-')}, fastat "
            f"{env['git']}); {env['model']}, {env['precision']}, channels_last {env['channels_last']}, cudnn.benchmark "
            f"{env['cudnn_benchmark']}. Median ms per training step (Trainer._step + lr schedule), in brackets × the "
            f"FGSM-RS step and × the clean step of the same shape, batch, backend and mode; graph and compile cells "
            f"also the speed-up over eager. \"auto\" ran: {env['auto']}.")
    cols = sorted({(r["batch"], r["backend"], r["mode"]) for r in rows}, key=lambda c: (-c[0], c[1], c[2]))
    out = [head]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"
    for shape in dict.fromkeys(r["shape"] for r in rows):
        c, h, w, eps = SHAPES[shape][:4]
        out += ["", f"**{shape}** ({c}×{h}×{w}, ε = {eps:.4g})", "",
                "| step | " + " | ".join(f"B={b} {be}{'' if mo == 'eager' else ' ' + mo}" for b, be, mo in cols) + " |",
                "|---" * (len(cols) + 1) + "|"]
        cell = {(r["method"], r["batch"], r["backend"], r["mode"]): r for r in rows if r["shape"] == shape}
        for m in dict.fromkeys(r["method"] for r in rows if r["shape"] == shape):
            parts = []
            for col in cols:
                r = cell.get((m, *col))
                if r is None or r["median_ms"] is None:
                    parts.append("" if r is None else r["error"][:40])
                    continue
                speed = "" if r["vs_eager"] is None else f"; {r['vs_eager']:.1f}× eager"
                parts.append(f"{r['median_ms']:.2f} ({fmt(r['vs_fgsm_rs'])}, {fmt(r['vs_clean'])}{speed})")
            out.append(f"| {m} | " + " | ".join(parts) + " |")
    tl = target_lines(rows)
    if tl:
        out += ["", "Targets (gpu-baseline.md):", *tl]
    return "\n".join(out) + "\n"


def write(out: Path, rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    add_ratios(rows)
    md = markdown(rows, env)
    (out / "steps.md").write_text(md)
    (out / "steps.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1, default=str))
    if rows:
        with open(out / "steps.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]) + ["date", "device", "torch", "triton"])
            w.writeheader()
            w.writerows({**r, **{k: env.get(k) for k in ("date", "device", "torch", "triton")}} for r in rows)
    return md


def run_case(row, base, init, batches, name, kw, eps, args, precision, device) -> None:
    """Time one case into ``row``: a Trainer on ``base`` (reset to ``init``) runs its train_epoch's per-batch step."""
    base.load_state_dict(init)
    base.train()
    graph, compiled = row["mode"] == "graph", row["mode"] == "compile"
    if compiled:
        torch._dynamo.reset()  # each case compiles its own graphs (no recompile limit reached across cases)
    cfg = TrainConfig(method="fgsm" if name == "clean" else name, eps=eps, epochs=1, batch_size=row["batch"],
                      subset=row["batch"], data_root=args.data_root, lr_schedule="cyclic", lr_max=0.2,
                      precision=precision, device=args.device, seed=args.seed, method_kwargs=kw, eval_n=16,
                      co_batch=16, progress=False, plot=False, checkpoint=False, cuda_graph=graph,
                      compile="default" if compiled else None)
    trainer = Trainer(cfg, model=base)
    if name == "clean":
        trainer.method = Clean(eps=eps)

    step = functools.partial(trainer.step, epoch=1)  # train_epoch's per-batch step (graph or eager, lr schedules)
    try:
        with fops.use_backend(row["backend"]):
            ms = time_case(step, batches, args.warmup, args.steps, args.max_case_seconds, device)
        row.update(median_ms=statistics.median(ms), p20_ms=quantile(ms, 0.2), p80_ms=quantile(ms, 0.8),
                   mean_ms=statistics.fmean(ms), n_steps=len(ms), hparams=trainer.method.describe())
        if graph:
            row["graph_replays"] = trainer.graph_replays
            if trainer.graph_mode_failed:  # the trainer fell back to eager steps
                row["error"] = f"capture failed, eager: {trainer.graph_mode_failed}"
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        del trainer, step
        gc.collect()  # the case's optimizer state, buffers (and captured graph) go before the next case


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.data_root is None and not Path(FASHION_MNIST_ROOT).exists() and (REPO / "data/fashion-mnist").exists():
        args.data_root = str(REPO / "data/fashion-mnist")
    try:
        shapes, backends, modes = split(args.shapes), split(args.backend), split(args.modes)
        batch_sizes = [int(b) for b in split(args.batch_sizes)]
        bad = ([s for s in shapes if s not in SHAPES] + [b for b in backends if b not in (*fops.BACKENDS, "auto")]
               + [m for m in modes if m not in ("eager", "graph", "compile")])
        if bad or not shapes or not batch_sizes or not backends or not modes:
            raise ValueError(f"unknown or missing values {bad}; shapes: {', '.join(SHAPES)}; backends: "
                             f"{', '.join((*fops.BACKENDS, 'auto'))}; modes: eager, graph, compile")
        if args.steps < 1 or args.warmup < 0:
            raise ValueError(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
        if "graph" in modes and (device.type != "cuda" or args.warmup < 4):
            raise ValueError("--modes graph needs --device cuda and --warmup >= 4")
        if "compile" in modes and args.warmup < 2:
            raise ValueError("--modes compile needs --warmup >= 2 (the first steps compile)")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda but no CUDA device is available")
        if not Path(args.data_root or FASHION_MNIST_ROOT).exists():
            raise ValueError(f"the Trainer needs Fashion-MNIST: none at {args.data_root or FASHION_MNIST_ROOT}; "
                             f"copy it to {REPO / 'data/fashion-mnist'} or pass --data-root")
        plan = [(i.partition("=")[0], i.partition("=")[2]) if "=" in i else (i, i) for i in split(args.methods)]
        overrides = hp_overrides(args)
        model_kwargs = {k.strip(): parse_value(v) for k, _, v in (t.partition("=") for t in args.model_kwarg)}
    except ValueError as exc:
        print(f"bench_steps: error: {exc}", file=sys.stderr)
        return 2
    from fastat.info import environment

    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    channels_last = device.type == "cuda"  # the Trainer's layout on CUDA (model and batches)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    env = {**environment(), "date": datetime.date.today().isoformat(), "model": args.model, "precision": precision,
           "channels_last": channels_last, "cudnn_benchmark": torch.backends.cudnn.benchmark, "warmup": args.warmup,
           "steps": args.steps, "auto": ", ".join(f"{op}={b}" for op, b in auto_choice(device).items())}
    if device.type == "cuda":
        env["device"] = torch.cuda.get_device_name(device)
    slug = env["device"].replace(" ", "_").replace("/", "_")
    out = Path(args.out or (Path(os.environ["OUT"]) / "steps" if os.environ.get("OUT")
                            else REPO / "bench" / "results" / f"steps-{env['date']}-{slug}"))
    rows: list[dict[str, Any]] = []
    crashed = False
    for shape in shapes:
        c, h, w, eps, _, _, ds = SHAPES[shape]
        torch.manual_seed(args.seed)
        base = build_model(args.model, in_channels=c, num_classes=10, input_size=(h, w), mean=SPECS[ds].mean,
                           std=SPECS[ds].std, **model_kwargs).to(device)
        if channels_last:
            base = base.to(memory_format=torch.channels_last)
        init = {k: v.clone() for k, v in base.state_dict().items()}
        batches = {b: make_batches(shape, b, device, channels_last, torch.Generator().manual_seed(args.seed))
                   for b in batch_sizes}
        for backend in backends:
            problems = backend_problems(backend, device)
            for b, mode, (label, name) in itertools.product(batch_sizes, modes, plan):
                row = {"shape": shape, "batch": b, "backend": backend, "mode": mode, "method": label,
                       "median_ms": None, "p20_ms": None, "p80_ms": None, "mean_ms": None, "n_steps": 0,
                       "error": "", "hparams": None, "graph_replays": None, "vs_eager": None}
                rows.append(row)
                if problems:
                    row["error"] = "unavailable: " + "; ".join(problems)
                    continue
                if args.budget is not None and time.perf_counter() - t_start > args.budget:
                    row["error"] = "skipped (budget)"
                    continue
                kw = {**SHAPE_HP.get(shape, {}).get(name, {}), **PRESET.get(label, {}), **overrides.get(label, {})}
                try:
                    run_case(row, base, init, batches[b], name, kw, eps, args, precision, device)
                    print(f"{shape} B={b} {backend:>6} {mode} {label:<10} {row['median_ms']:9.3f} ms "
                          f"({row['n_steps']} steps){' ' + row['error'] if row['error'] else ''}", flush=True)
                except Exception as exc:  # noqa: BLE001 - record and go on; exit 1 at the end
                    crashed = True
                    row["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
                    print(f"{shape} B={b} {backend} {mode} {label}: {row['error']}", file=sys.stderr, flush=True)
            write(out, rows, env)
    md = write(out, rows, env)
    print(f"\nresults in {out} ({time.perf_counter() - t_start:.0f} s)\n")
    print(md)
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
