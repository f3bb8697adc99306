"""``fastat train``: adversarial training from the command line (see `fastat.train.TrainConfig` for the options).

Several GPUs: ``torchrun --nproc_per_node=N -m fastat train ...`` (DDP, one GPU per rank; ``--batch-size`` is the
global batch, so the same flags train with the same hyper-parameters on 1 or N GPUs; see `fastat.train.Trainer`).
"""

from __future__ import annotations

import argparse
import sys
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
    """Add every ``fastat train`` flag to ``p`` except those in ``exclude`` (dests: "method", "seed", "out", ...);
    ``fastat sweep`` shares them this way. `config_from_args` turns the parsed flags into a `TrainConfig`."""
    skip = set(exclude)

    def add(*names: str, **kw: Any) -> None:
        if names[0].lstrip("-").replace("-", "_") not in skip:
            p.add_argument(*names, **kw)

    add("--method", required=True, help="fgsm, fgsm_rs, n_fgsm, zerograd, multigrad, atas, gradalign, apart, pgd")
    add("--dataset", default="fashion-mnist",
        help="fashion-mnist (default, embedded), mnist, cifar10, cifar100, svhn, imagefolder")
    add("--data-root", default=None, help="data folder (Fashion-MNIST defaults to the embedded copy; MNIST, CIFAR-10/100 "
                                          "and SVHN in torchvision's layouts; an image folder)")
    add("--download", action="store_true",
        help="let torchvision download a missing dataset into --data-root (needs network; never done otherwise)")
    add("--eps", default=None, help="ε in pixel units: 0.2 or 8/255 (default: the data set's customary ε: "
                                    "Fashion-MNIST 0.1, MNIST 0.3, CIFAR-10/100 and SVHN 8/255)")
    add("--alpha", default=None, help="step size (number or fraction; default: the method's)")
    add("--q", default=None, help="ZeroGrad quantile in [0, 1]")
    add("--hp", action="append", type=_kv, default=[], metavar="KEY=VALUE",
        help="any other method hyper-parameter, repeatable (e.g. --hp steps=10)")
    add("--epochs", type=int, default=10)
    add("--model", default=None,
        help="preact18, wrn28-10, wrn34-10, small-cnn (default: preact18 on CUDA, small-cnn on CPU)")
    add("--batch-size", type=int, default=512, help="global batch (summed over torchrun ranks)")
    add("--subset", type=int, default=None, help="train on the first N training images")
    add("--lr-schedule", default="cyclic", choices=["cyclic", "piecewise", "multistep", "constant"])
    add("--lr-max", type=float, default=None,
        help="peak learning rate (default: the recipe's for the model at this batch size: 0.2 at batch 128 for "
             "PreActResNet-18 and WideResNets, 0.1 for the small CNN, scaled down linearly for smaller batches)")
    add("--eps-warmup", type=float, default=None, metavar="EPOCHS",
        help="ramp eps and alpha up linearly from ~0 over the first EPOCHS epochs (default: 5 on SVHN as the N-FGSM "
             "and GradAlign recipes, 2 for the small CNN on CIFAR, else 0); helps a model that stays at chance with "
             "the full eps from scratch")
    add("--lr-peak", type=float, default=0.5,
        help="cyclic: fraction of the run at the peak (0.5 as WONG, N-FGSM, APART, ZeroGrad; GradAlign 0.4)")
    add("--milestones", default="0.5,0.75", help="multistep: fractions of the run")
    add("--momentum", type=float, default=0.9, help="SGD momentum (fixed)")
    add("--weight-decay", type=float, default=5e-4, help="SGD weight decay (APART's official value: 2e-4)")
    add("--pad-mode", default="zero", choices=["zero", "reflect"],
        help="padding of the random crop (reflect: the ZeroGrad CIFAR-10 loader)")
    add("--drop-last", action="store_true", help="drop each epoch's last partial batch (as GradAlign's loader)")
    add("--precision", default=None, choices=["bf16", "fp16", "fp32"], help="default: bf16 on CUDA, fp32 on CPU")
    add("--attack-precision", default=None, choices=["bf16", "fp16", "fp32"],
        help="the attacks' forward/backward (default: --precision). fp32 as the official ZeroGrad, N-FGSM and ATAS "
             "codes: exact input gradients (no bf16 ties in ZeroGrad's quantile) at the cost of fp32 attack passes")
    add("--device", default=None, metavar="cpu|cuda|cuda:N")
    add("--seed", type=int, default=0)
    add("--out", default=None, help="run folder (metrics, curves.png, checkpoints)")
    add("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    add("--overwrite", action="store_true", help="start afresh in an OUT that already holds a run (replaces it)")
    add("--label-smoothing", type=float, default=0.0)
    add("--ema", type=float, default=None, help="EMA decay of the weights (e.g. 0.999)")
    add("--cuda-graph", action="store_true",
        help="capture the whole training step in a CUDA graph once per epoch and replay it (bf16/fp32; "
             "removes launch overhead, which dominates at small batches)")
    add("--compile", nargs="?", const="default", default=None, metavar="MODE",
        help="torch.compile the model (default, max-autotune or max-autotune-no-cudagraphs); the "
             "attacks' forwards, the training forward and their backwards run compiled, GradAlign's "
             "double backprop stays eager")
    add("--eval-n", type=int, default=2000, help="test images for the per-epoch PGD evaluation")
    add("--eval-steps", type=int, default=20, help="PGD steps of the per-epoch evaluation (α = ε/4)")
    add("--co-batch", type=int, default=256, help="test images of the catastrophic-overfitting check")
    add("--co-steps", type=int, default=10, help="PGD steps of the catastrophic-overfitting check")
    add("--co-drop", type=float, default=0.2,
        help="CO when the check's PGD accuracy falls this much (absolute) below its best")
    add("--co-check", default="test", choices=["test", "wong"],
        help="the CO check: PGD on a fixed test batch vs its best (test), or WONG's --early-stop check, PGD on the "
             "epoch's first training batch in train mode vs the previous epoch (wong; WONG uses --co-steps 5)")
    add("--on-co", default="log", choices=["log", "stop", "rollback"],
        help="on catastrophic overfitting: log it, stop, or roll back to the last good epoch and make the method "
             "more conservative (ZeroGrad q + 0.1, α × 0.8, ...)")
    add("--on-diverge", default="stop", choices=["stop", "log"],
        help="a dead or diverged model (clean accuracy at chance level, non-finite loss): stop with one line naming "
             "the likely cause and the flags to change (default), or log it and train on")
    add("--final-eval", default="none", choices=["none", "pgd", "pgd+aa"],
        help="after training: PGD-50-10 (+ AutoAttack) of the last, best-PGD-epoch and EMA weights on "
             "--final-n test images, to final_eval.json (also on a finished run with --resume)")
    add("--final-n", type=int, default=1000, help="test images for --final-eval")
    add("--no-progress", action="store_true", help="no progress bars (one line per epoch; also the default when "
                                                   "stderr is not a terminal)")
    add("--no-plot", action="store_true", help="do not redraw OUT/curves.png after every epoch")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="adversarial training (FGSM-RS, N-FGSM, ZeroGrad, ATAS, PGD-AT, ...)")
    add_train_arguments(p)
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    mkw = dict(args.hp)
    for flag in ("alpha", "q"):
        value = getattr(args, flag)
        if value is None:
            continue
        if flag in mkw:
            raise ConfigError(f"argument '{flag}' is given twice (--{flag} {value} and --hp {flag}={mkw[flag]}): "
                              "pass one")
        mkw[flag] = parse_number(value, flag)
    import torch
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.precision or ("bf16" if dev == "cuda" else "fp32")
    try:
        milestones = tuple(float(m) for m in args.milestones.split(","))
    except ValueError:
        raise ConfigError(f"argument 'milestones' must be comma-separated fractions, got {args.milestones!r}") from None
    return TrainConfig(method=args.method, dataset=args.dataset, data_root=args.data_root,
                       download=getattr(args, "download", False),
                       eps=None if args.eps is None else parse_number(args.eps, "eps"), epochs=args.epochs,
                       model=args.model,
                       batch_size=args.batch_size, subset=args.subset, lr_schedule=args.lr_schedule,
                       lr_max=args.lr_max, lr_peak=args.lr_peak, milestones=milestones, precision=precision,
                       attack_precision=getattr(args, "attack_precision", None),
                       momentum=args.momentum, weight_decay=args.weight_decay, pad_mode=args.pad_mode,
                       drop_last=args.drop_last, eps_warmup=args.eps_warmup,
                       device=dev, seed=args.seed, out=args.out, method_kwargs=mkw,
                       label_smoothing=args.label_smoothing, ema=args.ema, cuda_graph=args.cuda_graph,
                       compile=args.compile,
                       eval_n=args.eval_n,
                       eval_steps=args.eval_steps, co_batch=args.co_batch, co_steps=args.co_steps,
                       co_drop=args.co_drop, co_check=args.co_check, on_co=args.on_co,
                       on_diverge=args.on_diverge, progress=not args.no_progress,
                       plot=not getattr(args, "no_plot", False),
                       final_eval=args.final_eval, final_n=args.final_n)


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
