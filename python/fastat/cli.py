"""The `fastat` command: `fastat info`, `fastat bench ops`, and the subcommands other modules add (train, sweep, ...).

Each feature module that has a subcommand exposes `add_parser(subparsers)`, which registers its parser with
`set_defaults(func=run)`; `run(args) -> int` is the exit status. Modules are imported only when present, so a
partial install still gets a working CLI.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules that contribute subcommands; missing ones are skipped.
SUBCOMMAND_MODULES = ("fastat.train.cli", "fastat.train.sweeps", "fastat.eval.cli", "fastat.plot")


def _parse_shape(text: str) -> tuple[int, int]:
    """(rows, cols) from "512x3072"; ValueError naming --shape unless both are integers >= 1."""
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--shape must look like 512x3072, got {text!r}") from None
    if rows < 1 or cols < 1:
        raise ValueError(f"--shape must have rows and columns >= 1, got {text!r}")
    return rows, cols


def _add_bench(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="micro-benchmarks")
    kinds = bench.add_subparsers(dest="bench_kind", required=True)
    ops = kinds.add_parser("ops", help="each op x backend vs pure PyTorch and the copy floor, on this machine")
    ops.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    ops.add_argument("--shape", action="append", help="BxN, repeatable (default: per device)")
    ops.add_argument("--op", action="append", help="op name, repeatable (default: all hot paths)")
    ops.add_argument("--backend", action="append",
                     help="native, triton, torch or compile (torch.compile of the reference; opt-in, it compiles "
                          "each case), repeatable (default: all fused backends that can run; torch always runs)")
    ops.add_argument("--grad-dtype", action="append", choices=["fp32", "bf16"], help="default: fp32 and bf16")
    ops.add_argument("--reps", type=int, default=100, help="timed repetitions per case on CUDA (default 100)")
    ops.add_argument("--out", default="bench/results", help="folder for CSV/JSON/Markdown/PNG ('' to skip)")
    ops.add_argument("--compare", default=None, metavar="OLD",
                     help="an earlier results folder (or its ops.json/ops.csv): list the cases more than 10%% slower "
                          "now and exit 1 if there are any")
    ops.set_defaults(func=_run_bench_ops)


class _BenchInputError(Exception):
    """Bad input to `fastat bench ops`; reported as one line."""


BENCH_TENSORS = 12  # rough count of (rows, cols) fp32 tensors a case holds at once (inputs, S = 3 grads, outputs)


def _check_fits(rows: int, cols: int, device) -> None:
    """A --shape whose tensors cannot fit in this device's memory is refused before anything is allocated."""
    import torch

    need = BENCH_TENSORS * 4 * rows * cols
    if device.type == "cuda":
        have = torch.cuda.mem_get_info(device)[1]
    else:
        try:
            have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):  # not POSIX: let the allocator decide
            return
    if need > have:
        raise _BenchInputError(f"--shape {rows}x{cols} needs about {need / 2**30:.3g} GiB, more than the "
                               f"{have / 2**30:.3g} GiB of {device}")


def _run_bench_ops(args) -> int:
    from . import benchmark
    from ._devices import resolve_device
    from .ops._dispatch import BACKENDS
    from .ops._schemas import HOT_PATHS

    try:
        device = resolve_device(args.device)
        shapes = [_parse_shape(text) for text in args.shape] if args.shape else None
        unknown = [op for op in args.op or () if op not in HOT_PATHS]
        if unknown:
            raise _BenchInputError(f"--op: unknown op {unknown[0]!r}; choose from {', '.join(HOT_PATHS)}")
        choices = (*BACKENDS, benchmark.COMPILE)
        unknown = [b for b in args.backend or () if b not in choices]
        if unknown:
            raise _BenchInputError(f"--backend: unknown backend {unknown[0]!r}; choose from {', '.join(choices)}")
        old_rows = benchmark.read_rows(args.compare) if args.compare else None
        if args.reps < 1:
            raise _BenchInputError(f"--reps must be >= 1, got {args.reps}")
        for rows, cols in shapes or ():
            _check_fits(rows, cols, device)
    except (_BenchInputError, ValueError, OSError) as exc:
        print(f"fastat bench ops: error: {exc}", file=sys.stderr)
        return 2
    ops = tuple(dict.fromkeys(args.op)) if args.op else HOT_PATHS
    for backend, why in benchmark.skipped_backends(args.backend or (), ops, device).items():
        print(f"fastat bench ops: skipping backend {backend!r} {why}", file=sys.stderr)
    rows = benchmark.run(str(device), args.out or None, shapes=shapes, ops=ops,
                         backends=tuple(dict.fromkeys(args.backend)) if args.backend else None,
                         grad_dtypes=tuple(args.grad_dtype or ("fp32", "bf16")), reps=args.reps)
    if old_rows is None:
        return 0
    worse = benchmark.compare(rows, old_rows)
    matched = len({(r.op, r.backend, r.rows, r.cols, r.grad_dtype) for r in rows} & {
        (o["op"], o["backend"], int(o["rows"]), int(o["cols"]), o["grad_dtype"]) for o in old_rows})
    print(f"compared with {args.compare}: {matched} common cases, {len(worse)} more than "
          f"{benchmark.REGRESSION:.0%} slower")
    for w in worse:
        print(f"  REGRESSION {w['op']} [{w['backend']}] {w['rows']}x{w['cols']} {w['grad_dtype']}: "
              f"{w['old_ms']:.4f} -> {w['new_ms']:.4f} ms ({w['ratio']:.2f}x)")
    return 1 if worse else 0


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
    _no_abbreviations(parser)
    return parser


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Turn off argparse's prefix matching in the parser and every subparser: `fastat sweep --method zerograd` must
    be an error, not a silent `--methods`."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `fastat info | head`: the reader left; end quietly (no traceback, no flush error)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # Ctrl-C: one line and how to go on, the shell's 128 + SIGINT
        print(f"\nfastat {args.command}: interrupted{_resume_hint(args, argv)}", file=sys.stderr)
        return 130


def _resume_hint(args: argparse.Namespace, argv: list[str] | None) -> str:
    """"; continue with: ..." for commands that resume (train with --out, sweep), else ""."""
    import shlex

    words = list(sys.argv[1:] if argv is None else argv)
    if args.command == "train" and getattr(args, "out", None):
        words = [w for w in words if w not in ("--resume", "--overwrite")] + ["--resume"]
    elif args.command != "sweep":  # a sweep re-run resumes its unfinished runs by itself
        return ""
    return f"; continue with: fastat {shlex.join(words)}"


if __name__ == "__main__":
    raise SystemExit(main())
