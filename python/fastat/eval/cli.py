"""`fastat eval CHECKPOINT`: PGD-k-r (and optionally AutoAttack) on a dataset's test split; a table, eval.json and
eval.csv (one row: n, ε, α, clean / PGD / AutoAttack accuracies, seconds).

Defaults come from the checkpoint (dataset, ε); α defaults to ε/4 (GA's evaluation; WONG/NF/ZG fix 2/255 for ε=8/255,
pass --alpha 2/255 for that). The first --n test images are used (as GA; not a random subset). Bad input (missing or
foreign checkpoint, a dataset that does not fit the model, ε outside (0, 1]) prints one error line and returns 2.

Several GPUs: ``torchrun --nproc_per_node=8 -m fastat eval runs/x/checkpoint.pt`` shards the test images over the
processes (process k on cuda:LOCAL_RANK, or the CPU with gloo) and gathers the per-sample results: the PGD numbers are
those of a single-process run, AutoAttack's a valid evaluation with per-rank random draws. Only rank 0 prints the
table and writes eval.json / eval.csv (with "world_size"); the input is checked on every rank before any process
waits for another, so bad input exits 2 everywhere. Spell --n as --num-samples there: torchrun's own parser takes
"--n" for an ambiguous abbreviation of its options.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import distributed as fdist
from .._devices import resolve_device
from ._common import PRECISIONS
from .pgd import IMPLS


class EvalInputError(Exception):
    """Bad input to `fastat eval`; reported as one line."""


def number(text: str) -> float:
    """A float from "0.03", "1e-3" or a fraction "8/255" (argparse type; `fastat._checks.parse_number`)."""
    from .. import _checks

    try:
        return _checks.parse_number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number or a fraction like 8/255, got {text!r}") from None


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("checkpoint", help="a fastat checkpoint (runs/NAME/checkpoint.pt)")
    p.add_argument("--dataset", default=None, help="dataset to evaluate on (default: the checkpoint's)")
    p.add_argument("--data-root", default=None, help="data folder (Fashion-MNIST defaults to the embedded copy)")
    p.add_argument("--download", action="store_true",
                   help="let torchvision download a missing test set into --data-root (needs network)")
    p.add_argument("--eps", default=None,
                   help="ε in (0, 1] pixel units, e.g. 0.1 or 8/255 (default: the checkpoint's)")
    p.add_argument("--alpha", default=None, help="PGD step, e.g. 2/255 (default: ε/4)")
    p.add_argument("--pgd-steps", type=int, default=50, help="PGD iterations (default 50)")
    p.add_argument("--restarts", type=int, default=10, help="PGD random restarts (default 10)")
    p.add_argument("--no-early-stop", action="store_true", help="run every PGD step on every sample (GA)")
    p.add_argument("--autoattack", action="store_true", help="also run standard AutoAttack (pyautoattack)")
    # --num-samples: under torchrun, whose own parser reads "--n" as an ambiguous abbreviation of its options
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=10000,
                   help="evaluate the first N test images (default 10000; --num-samples under torchrun)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per forward (default: sized from memory)")
    p.add_argument("--device", default=None,
                   help="cuda, cuda:1, cpu (default: cuda if available; under torchrun cuda means cuda:LOCAL_RANK)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="forward precision (default fp32)")
    p.add_argument("--impl", choices=IMPLS, default="batched", help="PGD engine (default batched)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random starts (default 0)")
    p.add_argument("--out", default=None,
                   help="where to write eval.json and eval.csv (a folder or a .json path; default: next to the "
                        "checkpoint)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to the ``fastat`` command's subparsers."""
    p = subparsers.add_parser("eval", help="robust accuracy of a checkpoint (PGD-50-10, AutoAttack)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return configure_parser(p)


def main(argv: list[str] | None = None) -> int:
    """``python -m fastat.eval CHECKPOINT [options]``."""
    parser = configure_parser(argparse.ArgumentParser(prog="python -m fastat.eval", description=__doc__,
                                                      formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    return args.func(args)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation described by ``args``; returns the exit status (0, or 2 on bad input).

    Under torchrun (WORLD_SIZE > 1) every rank runs this: all input checks come before the process group starts,
    and only rank 0 prints the table and writes eval.json and eval.csv (same name, .csv suffix)."""
    world = fdist.env_world_size()
    try:
        job = _prepare(args, world)
    except EvalInputError as exc:
        print(f"fastat eval: error: {exc}", file=sys.stderr)
        return 2
    owns_group = world > 1 and not fdist.current().enabled  # leave a caller's process group up
    try:
        rank = fdist.init(job.device.type) if world > 1 else fdist.Dist()
    except ValueError as exc:  # RANK/LOCAL_RANK missing or malformed, a bad FASTAT_DIST_TIMEOUT
        print(f"fastat eval: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        report = _evaluate(args, job, rank)
        if rank.is_main:
            print(format_table(report), flush=True)  # the numbers are on screen whatever happens to the files
            job.out_path.parent.mkdir(parents=True, exist_ok=True)
            job.out_path.write_text(json.dumps(report, indent=2) + "\n")
            csv_path = write_csv(report, job.out_path.with_suffix(".csv"))
            print(f"wrote {job.out_path} and {csv_path.name}")
    finally:
        if owns_group:
            fdist.shutdown()
    return 0


@dataclass
class _Job:
    """Everything `_prepare` checked and loaded: the model on its device, the samples, ε and α."""

    ckpt: dict[str, Any]
    model: torch.nn.Module
    dataset: str
    x: torch.Tensor
    y: torch.Tensor
    eps: float
    alpha: float
    device: torch.device
    out_path: Path


def _prepare(args: argparse.Namespace, world: int) -> _Job:
    """Check the arguments, load the checkpoint and the data (no collectives: each rank fails the same way)."""
    from ..checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
    from ..data import SPECS, canonical_name, load_dataset

    for name, value, low in (("--pgd-steps", args.pgd_steps, 1), ("--restarts", args.restarts, 1), ("--n", args.n, 1)):
        if value < low:
            raise EvalInputError(f"{name} must be >= {low}, got {value}")
    if args.batch_size is not None and args.batch_size < 1:
        raise EvalInputError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = _rank_device(args.device) if world > 1 else _device(args.device)
    if args.autoattack:
        from .autoattack import autoattack_available

        if not autoattack_available():
            raise EvalInputError("--autoattack needs the 'pyautoattack' package (pip install pyautoattack; "
                                 "Python >= 3.10)")
    try:
        ckpt = load_checkpoint(args.checkpoint, map_location="cpu")
    except CheckpointError as exc:  # missing, a folder, foreign bytes, another torch file: one line each
        raise EvalInputError(str(exc)) from None
    try:
        model = model_from_checkpoint(ckpt)
    except (CheckpointError, ValueError) as exc:
        raise EvalInputError(str(exc)) from None
    eps = _number("--eps", args.eps) if args.eps is not None else ckpt["eps"]
    if not 0 < eps <= 1:  # as `fastat train`
        raise EvalInputError(f"--eps must be > 0 and <= 1 (pixel units, e.g. 8/255), got {eps:g}")
    alpha = _number("--alpha", args.alpha) if args.alpha is not None else eps / 4
    if not alpha > 0:
        raise EvalInputError(f"--alpha must be > 0, got {alpha}")
    try:
        dataset = canonical_name(args.dataset or ckpt["dataset"])
        if dataset in SPECS:  # catch a mismatch before touching the data
            spec = SPECS[dataset]
            _check_fit(ckpt["model_config"], dataset, spec.in_channels, spec.num_classes, spec.input_size)
        ds = load_dataset(dataset, root=args.data_root, split="test", download=args.download)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise EvalInputError(str(exc)) from None
    _check_fit(ckpt["model_config"], dataset, ds.in_channels, ds.num_classes, ds.input_size)
    n = min(args.n, len(ds))
    x = ds.images[:n].float().div_(255.0)
    out_path = _writable(_out_path(args.out, args.checkpoint))  # before an evaluation that may take an hour
    return _Job(ckpt, model.to(device), dataset, x, ds.labels[:n], eps, alpha, device, out_path)


def _evaluate(args: argparse.Namespace, job: _Job, rank: Any) -> dict[str, Any]:
    """PGD (and AutoAttack) on the job's samples; sharded over the process group when ``rank.enabled``."""
    from .._malloc import tune_for
    from .pgd import pgd_robustness

    # every PGD iteration frees and re-allocates a pool's activations: keep them in glibc's heap (`fastat._malloc`)
    malloc = tune_for(job.device)
    res = pgd_robustness(job.model, job.x, job.y, job.eps, job.alpha, steps=args.pgd_steps, restarts=args.restarts,
                         early_stop=not args.no_early_stop, precision=args.precision, batch_size=args.batch_size,
                         seed=args.seed, impl=args.impl, device=job.device,
                         progress=not args.no_progress and rank.is_main, distributed=rank.enabled)
    ckpt = job.ckpt
    report: dict[str, Any] = {
        "checkpoint": str(Path(args.checkpoint).resolve()), "model": ckpt["model_config"].get("name"),
        "epoch": ckpt["epoch"], "dataset": job.dataset, "split": "test", "n": int(job.x.shape[0]), "eps": job.eps,
        "alpha": job.alpha, "device": str(job.device), "world_size": rank.world_size, "precision": args.precision,
        "seed": args.seed, "malloc": malloc, "clean_acc": res.clean_acc, "pgd": res.to_dict(), "autoattack": None,
        "versions": {"fastat": _fastat_version(), "torch": torch.__version__},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if args.autoattack:
        from .autoattack import run_autoattack

        aa = run_autoattack(job.model, job.x, job.y, job.eps, version="standard", device=job.device,
                            batch_size=args.batch_size or 500, seed=args.seed, distributed=rank.enabled)
        report["autoattack"] = aa.to_dict()
    return report


def _device(name: str | None) -> torch.device:
    try:
        return resolve_device(name)
    except ValueError as exc:
        raise EvalInputError(str(exc)) from None


def _rank_device(name: str | None) -> torch.device:
    """This torchrun process's device: cuda:LOCAL_RANK when CUDA is used, else ``--device`` (cpu by default).

    With more processes than GPUs on the node it is an error, unless FASTAT_DIST_BACKEND=gloo shares the GPUs
    (process k on cuda:(k mod count), e.g. to test several ranks on one GPU)."""
    local_text = os.environ.get("LOCAL_RANK", "")
    if not local_text.isdigit():
        raise EvalInputError(f"WORLD_SIZE > 1 but LOCAL_RANK is {local_text or 'not set'}; launch with torchrun")
    if name is not None and name.strip().lower().startswith("cuda:"):
        raise EvalInputError(f"--device {name}: under torchrun each process uses cuda:LOCAL_RANK; "
                             f"pass --device cuda or leave --device out")
    dev = _device(name)
    if dev.type != "cuda":
        return dev
    try:
        return torch.device("cuda", fdist.local_cuda_index())
    except ValueError as exc:
        raise EvalInputError(f"{exc} (or --device cpu)") from None


def _number(flag: str, text: str) -> float:
    try:
        return number(text)
    except argparse.ArgumentTypeError as exc:
        raise EvalInputError(f"{flag}: {exc}") from None


def _check_fit(config: dict[str, Any], dataset: str, channels: int, classes: int, size: tuple[int, int]) -> None:
    """The dataset's channels, classes and (for size-dependent models) image size must match the model's."""
    checks = [("input channels", config.get("in_channels"), channels), ("classes", config.get("num_classes"), classes)]
    if config.get("name") == "small-cnn":
        want = config.get("input_size")
        want = (want, want) if isinstance(want, int) else tuple(want) if want is not None else None
        checks.append(("image size", want, tuple(size)))
    for what, want, got in checks:
        if want is not None and want != got:
            raise EvalInputError(f"model {config.get('name')!r} expects {what} {want}, dataset {dataset!r} has {got}")


def _writable(path: Path) -> Path:
    """``path`` (eval.json) if it is not a folder and its folder is, or can be created as, a writable one (nothing
    is created yet); EvalInputError naming it otherwise."""
    from .._files import check_writable_folder

    try:
        if path.is_dir():
            raise IsADirectoryError(21, f"{str(path)!r} is a folder, not a file to write")
        check_writable_folder(path.parent)
    except OSError as exc:
        raise EvalInputError(f"cannot write the results to {str(path)!r}: {exc.strerror or exc}") from None
    return path


def _out_path(out: str | None, checkpoint: str) -> Path:
    if out is None:
        return Path(checkpoint).resolve().parent / "eval.json"
    p = Path(out)
    return p if p.suffix == ".json" else p / "eval.json"


def _fastat_version() -> str:
    from .. import __version__

    return __version__


CSV_COLUMNS = ("checkpoint", "model", "epoch", "dataset", "n", "eps", "alpha", "clean_acc", "pgd_steps", "pgd_restarts",
               "pgd_robust_acc_max_loss", "pgd_robust_acc_any", "pgd_seconds", "autoattack_acc", "autoattack_seconds",
               "precision", "device", "world_size", "seed", "date")


def csv_row(report: dict[str, Any]) -> dict[str, Any]:
    """The report as one flat row of `CSV_COLUMNS` (the AutoAttack cells empty when it was not run)."""
    pgd, aa = report["pgd"], report.get("autoattack") or {}
    row = {k: report.get(k) for k in CSV_COLUMNS}
    row.update(pgd_steps=pgd.get("steps"), pgd_restarts=pgd.get("restarts"),
               pgd_robust_acc_max_loss=pgd["robust_acc_max_loss"], pgd_robust_acc_any=pgd["robust_acc_any"],
               pgd_seconds=pgd["seconds"], autoattack_acc=aa.get("robust_acc"), autoattack_seconds=aa.get("seconds"))
    return row


def write_csv(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as a header and one `csv_row` to ``path``; returns it."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerow(csv_row(report))
    return path


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of the report's accuracies and times."""
    pgd = report["pgd"]
    tag = f"PGD-{pgd['steps']}-{pgd['restarts']}"
    world = report.get("world_size", 1)
    where = report["device"] if world == 1 else f"{world} processes, rank 0 on {report['device']}"
    rows = [("model / epoch", f"{report['model']} / {report['epoch']}"),
            ("dataset (test, first n)", f"{report['dataset']} ({report['n']})"),
            ("eps / alpha", f"{report['eps']:.5g} / {report['alpha']:.5g}"),
            ("clean accuracy", f"{100 * report['clean_acc']:.2f} %"),
            (f"{tag} robust (max-loss, official)", f"{100 * pgd['robust_acc_max_loss']:.2f} %"),
            (f"{tag} robust (any restart)", f"{100 * pgd['robust_acc_any']:.2f} %"),
            (f"{tag} time", f"{pgd['seconds']:.1f} s ({pgd['impl']}, {pgd['precision']}, {where})")]
    aa = report.get("autoattack")
    if aa:
        rows.append(("AutoAttack (standard) robust", f"{100 * aa['robust_acc']:.2f} %"))
        rows.append(("AutoAttack time", f"{aa['seconds']:.1f} s"))
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 3 + max(len(v) for _, v in rows))
    return "\n".join([line] + [f"{k.ljust(width)} | {v}" for k, v in rows] + [line])
