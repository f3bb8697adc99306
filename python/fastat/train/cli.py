"""``fastat train``: adversarial training from the command line (see `fastat.train.TrainConfig` for the options).

Several GPUs: ``torchrun --nproc_per_node=N -m fastat train ...`` (DDP, one GPU per rank; ``--batch-size`` is the
global batch, so the same flags train with the same hyper-parameters on 1 or N GPUs; see `fastat.train.Trainer`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable

from .config import ConfigError, TrainConfig, parse_number, parse_value

__all__ = ["add_parser", "add_train_arguments", "config_from_args", "run"]


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), parse_value(v, k.strip())


def add_train_arguments(p: argparse.ArgumentParser, exclude: Iterable[str] = ()) -> argparse.ArgumentParser:
    """Add a flag for every `TrainConfig` field (generated from the fields' `option` declarations), the method
    shortcuts ``--alpha``/``--q`` and ``--resume``/``--overwrite``, except the dests in ``exclude`` ("method",
    "seed", "out", ...; ``fastat sweep`` shares them this way). `config_from_args` turns the parsed flags into a
    `TrainConfig`."""
    skip = set(exclude)
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        meta, kind = f.metadata, f.metadata.get("kind") or type(f.default).__name__
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "help": meta.get("help")}
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if kind == "switch":
            kw.update(action="store_true")
        elif kind == "no-switch":
            flag, kw = "--no-" + f.name.replace("_", "-"), {**kw, "action": "store_false"}
        elif kind == "pairs":
            kw.update(action="append", type=_kv, default=[])
        elif kind == "optional":
            kw.update(nargs="?", const="default", default=None)
        else:
            kw["default"] = None if kind in ("number", "floats") else f.default
            kw["type"] = {"int": int, "float": float}.get(kind, str)
            if meta.get("choices"):
                kw["choices"] = list(meta["choices"])
        if f.name == "method":
            kw.update(required=True, default=None)
        p.add_argument(flag, **kw)
    for name, text in (("alpha", "step size (number or fraction; default: the method's)"),
                       ("q", "ZeroGrad quantile in [0, 1]")):
        if name not in skip:
            p.add_argument(f"--{name}", default=None, help=f"{text}; the same as --hp {name}=VALUE")
    if "resume" not in skip:
        p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    if "overwrite" not in skip:
        p.add_argument("--overwrite", action="store_true", help="start afresh in an OUT that already holds a run "
                                                                "(the old one is moved aside once the new one starts)")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="adversarial training (FGSM-RS, N-FGSM, ZeroGrad, ATAS, PGD-AT, ...)")
    add_train_arguments(p)
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` of parsed `add_train_arguments` flags: every field read back by its declared kind (so the CLI
    and ``TrainConfig(...)`` with the same values are the same configuration; defaults resolve in `validate`)."""
    values: dict[str, Any] = {}
    for f in fields(TrainConfig):
        if not hasattr(args, f.name):
            continue
        value, kind = getattr(args, f.name), f.metadata.get("kind")
        if kind == "number" and value is not None:
            value = parse_number(value, f.name)
        elif kind == "floats":
            value = f.default if value is None else _floats(value, f.name)
        elif kind == "pairs":
            value = dict(value or [])
        values[f.name] = value
    mkw = values.setdefault("method_kwargs", {})
    for flag in ("alpha", "q"):
        value = getattr(args, flag, None)
        if value is None:
            continue
        if flag in mkw:
            raise ConfigError(f"argument '{flag}' is given twice (--{flag} {value} and --hp {flag}={mkw[flag]}): "
                              "pass one")
        mkw[flag] = parse_number(value, flag)
    return TrainConfig(**values)


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise ConfigError(f"argument '{name}' must be comma-separated fractions, got {text!r}") from None


def set_aside(out: Path) -> Path | None:
    """Move a non-empty run folder to ``<out>.replaced-<date>`` beside it (whole: no file of the old run stays next
    to the new one, and nothing is lost) and recreate ``out`` empty; returns where it went, or None when there was
    nothing to move. ConfigError (one line) when it cannot be moved."""
    import datetime

    if not out.is_dir() or not any(out.iterdir()):
        return None
    aside = out.with_name(f"{out.name}.replaced-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    try:
        out.rename(aside)
        out.mkdir()
    except OSError as exc:
        raise ConfigError(f"--overwrite: cannot move the previous run in {str(out)!r} aside: "
                          f"{exc.strerror or exc}") from None
    return aside


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..checkpoint import CheckpointError
    from .state import CKPT
    from .trainer import Trainer

    try:
        cfg = config_from_args(args)
        if args.resume and args.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other (continue the run in --out, or replace it)")
        if args.resume and not args.out:
            raise ConfigError("--resume needs --out (the run folder to continue)")
        if args.out and (Path(args.out) / CKPT).exists() and not (args.resume or args.overwrite):
            raise ConfigError(f"{args.out!r} already holds a run ({CKPT}): pass --resume to continue it, "
                              "--overwrite to replace it, or another --out")
        trainer = Trainer(cfg)  # every check and the data load: nothing of an old run is touched before this passed
        if args.out and args.overwrite:
            aside = set_aside(Path(args.out)) if trainer.dist.is_main else None
            distributed.barrier()
            if aside is not None:
                print(f"fastat train: moved the previous run in {args.out!r} to {str(aside)!r}", file=sys.stderr)
    except ConfigError as exc:
        print(f"fastat train: error: {exc}", file=sys.stderr)
        return 2
    main = trainer.dist.is_main
    try:
        if args.resume and not trainer.resume() and main:
            print(f"fastat train: no checkpoint in {args.out!r}, starting from scratch", file=sys.stderr)
    except (ConfigError, CheckpointError) as exc:
        print(f"fastat train: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    if main and not args.out:
        print("fastat train: no --out: metrics, curves and checkpoints are not written", file=sys.stderr)
    if main:
        procs = f", {trainer.dist.world_size} processes" if trainer.dist.enabled else ""
        print(f"fastat train: {trainer.method.describe()} on {cfg.dataset} ({trainer.loader.num_examples} images), "
              f"model {trainer.model_name}, {cfg.epochs} epochs, batch {cfg.batch_size}, {cfg.precision}, "
              f"{trainer.device}{procs}", flush=True)
    trainer.fit()
    distributed.shutdown()
    return 0
