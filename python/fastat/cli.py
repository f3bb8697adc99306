"""The `fastat` command: `fastat info`, `fastat bench ops`, and the subcommands other modules add (train, sweep, ...).

Each feature module that has a subcommand exposes `add_parser(subparsers)`, which registers its parser with
`set_defaults(func=run)`; `run(args) -> int` is the exit status. Modules are imported only when present, so a
partial install still gets a working CLI.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute subcommands; missing ones are skipped.
SUBCOMMAND_MODULES = ("fastat.train.cli", "fastat.train.sweeps", "fastat.eval.cli", "fastat.plot")


def _parse_shape(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 512x3072, got {text!r}") from None
    return rows, cols


def _add_bench(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="micro-benchmarks")
    kinds = bench.add_subparsers(dest="bench_kind", required=True)
    ops = kinds.add_parser("ops", help="each op x backend vs pure PyTorch and the copy floor, on this machine")
    ops.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ops.add_argument("--shape", action="append", type=_parse_shape, help="BxN, repeatable (default: per device)")
    ops.add_argument("--op", action="append", help="op name, repeatable (default: all hot paths)")
    ops.add_argument("--backend", action="append", help="backend, repeatable (default: all that can run)")
    ops.add_argument("--grad-dtype", action="append", choices=["fp32", "bf16"], help="default: fp32 and bf16")
    ops.add_argument("--reps", type=int, default=100)
    ops.add_argument("--out", default="bench/results", help="folder for CSV/JSON/Markdown ('' to skip)")
    ops.set_defaults(func=_run_bench_ops)


def _run_bench_ops(args) -> int:
    import torch

    from . import benchmark
    from .ops._schemas import HOT_PATHS

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("fastat bench ops: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    unknown = [op for op in args.op or () if op not in HOT_PATHS]
    if unknown:
        print(f"fastat bench ops: unknown op {unknown[0]!r}; choose from {', '.join(HOT_PATHS)}", file=sys.stderr)
        return 2
    benchmark.run(device, args.out or None, shapes=args.shape, ops=args.op, backends=args.backend,
                  grad_dtypes=tuple(args.grad_dtype or ("fp32", "bf16")), reps=args.reps)
    return 0


def _run_info(args) -> int:
    from .info import main as info_main

    return info_main()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastat", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="op x backend availability and build facts").set_defaults(func=_run_info)
    _add_bench(sub)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that feature is not part of this install
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `fastat info | head`: the reader left; end quietly (no traceback, no flush error)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
