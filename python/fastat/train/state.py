"""A run's state on disk: what a checkpoint of a `Trainer` holds, writing and reading it, resuming a run (and refusing
one whose settings changed), the per-epoch checkpoint files and the manifest ``run.json``.

A training checkpoint (`fastat.checkpoint` format) holds the model and, as extras, everything needed to continue
bit-identically on the CPU: optimiser(s), schedules, the method's state (hyper-parameters as changed by roll-backs,
per-example buffers), the loader's position, the CO monitor, the grad scaler, the EMA weights, the metrics so far,
the roll-back count, the config and the RNG states (every rank's under torchrun). Per epoch the trainer writes
``checkpoint.pt`` and copies it atomically to ``last_good.pt`` (neither CO nor diverged) and ``best.pt`` (the highest
PGD accuracy of a good epoch). Reading verifies the checksum, loads weights only, and checks the model's keys and
shapes before any state is touched; resuming falls back to ``last_good.pt`` when ``checkpoint.pt`` is damaged.
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import distributed as dist_
from ..checkpoint import CheckpointError, copy_checkpoint, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig
from .monitor import COMonitor
from .recipes import default_eps_warmup, default_lr, default_model

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["BEST", "CHANGED_DEFAULTS", "CKPT", "GOOD", "RESTORED", "RESUME_FREE", "check_resumable",
           "checkpoint_epoch", "load", "read", "resolved_config", "restore", "resume", "save", "write_manifest"]

CKPT = "checkpoint.pt"
GOOD = "last_good.pt"
BEST = "best.pt"  # the epoch with the highest PGD accuracy on the evaluation slice so far (early stopping, Rice et al.)
# Config keys a resumed run may change: they do not alter the training trajectory (output, progress, evaluation).
RESUME_FREE = frozenset({"out", "progress", "plot", "checkpoint", "eval_n", "eval_steps", "eval_restarts", "on_co",
                         "on_diverge", "max_rollbacks", "final_eval", "final_n", "compile", "download"})
# TrainConfig defaults that changed: {field: (old, new, date)}, named when a resume is refused over them
CHANGED_DEFAULTS = {"lr_peak": (0.4, 0.5, "2026-12-01"), "lr_max": (0.2, "the model's and batch size's", "2026-12-07"),
                    "eps": (0.2, "the data set's", "2026-12-07"), "precision": ("fp32", "bf16 on CUDA", "2026-12-07")}
# what `restore` reads from a checkpoint (`read` checks them before any state is touched)
RESTORED = ("model", "optimizer", "scheduler", "method", "loader", "monitor", "scaler", "rng", "history", "epoch")


def _location(t: Trainer) -> torch.device:
    """Where checkpoints are loaded: the training device, except for per-example state kept in host memory (ATAS
    ``state_device="cpu"``), which must not pass through the GPU whole (every tensor is copied to its place by the
    load_state_dict calls anyway)."""
    return torch.device("cpu") if t.method.host_state else t.device


def _extras(t: Trainer) -> dict[str, Any]:
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    if t.dist.enabled:  # every rank's streams (a collective: all ranks call `save`)
        mine = {"torch": rng["torch"]}
        if t.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(t.device)
        rng["ranks"] = dist_.all_gather_object(mine)
    extra = {"optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
             "method": t.method.state_dict(), "method_name": t.method.name, "rng": rng,
             "loader": t.loader.state_dict(), "config": t.cfg.to_dict(), "history": t.history,
             "monitor": t.monitor.state_dict(), "rollbacks": t.rollbacks, "scaler": t.scaler.state_dict()}
    if t.param_optimizer is not None:
        extra["param_optimizer"] = t.param_optimizer.state_dict()
        extra["param_scheduler"] = t.param_scheduler.state_dict()
    if t.ema is not None:
        extra["ema"] = t.ema.state_dict()
    return extra


def save(t: Trainer, path: str | Path) -> Path:
    """Write a checkpoint (under torchrun: every rank must call it; rank 0 writes, the others wait)."""
    extras = _extras(t)
    if t.dist.is_main:
        path = save_checkpoint(path, model=t.model, model_config=t.model_config, dataset=t.cfg.dataset,
                               eps=t.cfg.eps, epoch=t.epoch, world_size=t.dist.world_size, **extras)
    dist_.barrier()
    return Path(path)


def read(t: Trainer, path: str | Path, *, config_check: bool = False) -> dict[str, Any]:
    """Load a training checkpoint (weights only: no pickled code runs; checksum verified) and check, before any state
    is touched, that it holds what `restore` needs — with ``config_check`` first that its config matches this run's
    (`check_resumable`, ConfigError) — and the model's keys and shapes; `CheckpointError` naming the file and the
    first problem otherwise."""
    ck = load_checkpoint(path, map_location=_location(t))
    missing = [k for k in RESTORED if k not in ck]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {', '.join(missing)}: not a training checkpoint of "
                              "fastat train")
    if config_check and ck.get("config") is not None:  # a different model is a config difference, said as one
        check_resumable(t, ck["config"])
    own, theirs = t.model.state_dict(), ck["model"]
    problem = next((f"missing tensor {k!r}" for k in own if k not in theirs), None) or next(
        (f"unexpected tensor {k!r}" for k in theirs if k not in own), None) or next(
        (f"tensor {k!r} has shape {tuple(theirs[k].shape)}, the model's {tuple(v.shape)}" for k, v in own.items()
         if isinstance(theirs[k], torch.Tensor) and theirs[k].shape != v.shape), None)
    if problem:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit this model: {problem}")
    return ck


def restore(t: Trainer, ck: dict[str, Any]) -> None:
    """Put the trainer in the state ``ck`` (from `read`) describes."""
    if t.graphed is not None:
        t.graphed.reset()  # a capture holds the tensors a load replaces (method, optimizer)
    t.model.load_state_dict(ck["model"])
    t.optimizer.load_state_dict(ck["optimizer"])
    t.scheduler.load_state_dict(ck["scheduler"])
    t.method.load_state_dict(ck["method"])
    t.method.to(t.device)
    t.loader.load_state_dict(ck["loader"])
    t.monitor.load_state_dict(ck["monitor"])
    t.scaler.load_state_dict(ck["scaler"])
    if t.param_optimizer is not None and "param_optimizer" in ck:
        t.param_optimizer.load_state_dict(ck["param_optimizer"])
        t.param_scheduler.load_state_dict(ck["param_scheduler"])
    if t.ema is not None and "ema" in ck:
        t.ema.load_state_dict(ck["ema"])
    torch.set_rng_state(ck["rng"]["torch"].cpu())
    if "cuda" in ck["rng"] and torch.cuda.is_available():
        # the devices this machine has: rank 0 of a torchrun job on 8 GPUs saved the states of all 8
        torch.cuda.set_rng_state_all([s.cpu() for s in ck["rng"]["cuda"][:torch.cuda.device_count()]])
    ranks = ck["rng"].get("ranks")
    if t.dist.enabled:
        if ranks is not None and len(ranks) == t.dist.world_size:
            mine = ranks[t.dist.rank]
            torch.set_rng_state(mine["torch"].cpu())
            if "cuda" in mine and t.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"].cpu(), t.device)
        else:  # written by another number of processes: fresh per-rank streams (not bit-identical)
            t.replicas.seed_rank_stream(int(ck["epoch"]))
    t.history = list(ck["history"])
    if t.writer is not None:
        t.writer.rows = list(t.history)
    t.rollbacks = int(ck.get("rollbacks", 0))
    t.epoch = int(ck["epoch"])


def load(t: Trainer, path: str | Path) -> None:
    """Restore a checkpoint written by `save` (`read`, then `restore`)."""
    restore(t, read(t, path))


def resolved_config(cfg: dict[str, Any], device_type: str) -> dict[str, Any]:
    """A config dict with the values left to the recipe filled in (`recipes`: device type, model name, lr_max,
    eps_warmup); a field newer than a checkpoint's config counts at its default (the run was trained with it)."""
    from ..methods import without_placement

    d = {**TrainConfig().to_dict(), **cfg}
    d["device"] = str(d.get("device") or device_type).split(":")[0]
    d["model"] = d.get("model") or default_model(d["device"])
    if d.get("lr_max") is None:
        d["lr_max"] = default_lr(d["model"], int(d["batch_size"]))
    if d.get("eps_warmup") is None:
        d["eps_warmup"] = default_eps_warmup(d["dataset"], d["model"])
    d["milestones"] = [float(m) for m in d.get("milestones", ())]
    # where the method keeps its state (ATAS state_device) may change between a run and its resumption
    d["method_kwargs"] = without_placement(d.get("method_kwargs") or {})
    return d


def check_resumable(t: Trainer, saved: dict[str, Any]) -> None:
    """Raise ConfigError if the checkpoint's config differs from this run's in anything that changes training."""
    old, new = resolved_config(saved, t.device.type), resolved_config(t.cfg.to_dict(), t.device.type)
    diff = [k for k in sorted(set(old) | set(new)) if k not in RESUME_FREE and old.get(k) != new.get(k)]
    if diff:
        was = ", ".join(f"{k}={old.get(k)!r}" for k in diff)
        now = ", ".join(f"{k}={new.get(k)!r}" for k in diff)
        hints = [f"the default of {k} changed from {o!r} to {n!r} on {day}: pass {k}={o!r}"
                 for k, (o, n, day) in CHANGED_DEFAULTS.items() if k in diff and old.get(k) == o
                 and (k in t.cfg.defaulted or getattr(t.cfg, k) == TrainConfig.__dataclass_fields__[k].default)]
        raise ConfigError(f"cannot resume {t.out}: its checkpoint was written with {was} (now {now}); pass the same "
                          "arguments, or another --out to start a new run" + "".join(f" ({h})" for h in hints))


def resume(t: Trainer) -> bool:
    """Load ``out/checkpoint.pt`` if there is one (``last_good.pt`` if it is damaged, saying so); returns whether it
    did. Raises ConfigError (before touching any state) if the checkpoint was written with a config that differs in
    anything but `RESUME_FREE` keys."""
    if t.out is None or not (t.out / CKPT).exists():
        return False
    try:
        ck = read(t, t.out / CKPT, config_check=True)
    except CheckpointError as exc:  # damaged (a disk error, a bit flip): the last good epoch, if there is one
        if not (t.out / GOOD).exists():
            raise
        try:
            ck = read(t, t.out / GOOD, config_check=True)
        except CheckpointError as also:
            raise CheckpointError(f"{exc}; {GOOD} is no better: {also}") from None
        t.say(f"fastat train: {exc}; resuming from {GOOD} (epoch {ck['epoch']}) instead")
    restore(t, ck)
    if t.writer is not None:
        t.writer.flush()
    return True


def checkpoint_epoch(t: Trainer, row: dict[str, Any], good: bool) -> None:
    """``checkpoint.pt``, copied to ``last_good.pt`` when the epoch is ``good`` (neither CO nor diverged) and to
    ``best.pt`` on a new best PGD accuracy of a good epoch (rank 0 writes; every rank returns once the files are
    there)."""
    path = save(t, t.out / CKPT)
    if t.dist.is_main and good:  # atomic copies: a kill mid-copy keeps the previous file whole
        copy_checkpoint(path, t.out / GOOD)
        earlier = [r["pgd_acc"] for r in t.history[:-1] if r.get("event") == "epoch" and not r.get("diverged")]
        if not earlier or row["pgd_acc"] > max(earlier):
            copy_checkpoint(path, t.out / BEST)
    dist_.barrier()


def write_manifest(t: Trainer) -> dict[str, Any]:
    """``run.json``: what this run is, for reproducing and comparing runs — the resolved config (seed included), the
    method with its hyper-parameters, the model, data and evaluation sizes, processes, device, versions and the ops
    backend. Rewritten each time `fit` starts (``started_at_epoch`` > 0 after a resume)."""
    from .. import __version__, ops

    device = str(t.device)
    if t.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(t.device)})"
    manifest = {
        "config": resolved_config(t.cfg.to_dict(), t.device.type), "method": t.method.describe(),
        "hparams": {k: v for k, v in t.method.hparams.items() if isinstance(v, (int, float, str, bool))},
        "model": t.model_config or {"name": type(t.model).__name__, "custom": True},
        "parameters": sum(p.numel() for p in t.model.parameters()),
        "train_examples": t.loader.num_examples, "steps_per_epoch": len(t.loader),
        "eval_n": int(t.x_eval.shape[0]), "co_check": t.cfg.co_check,
        "co_batch": int(t.monitor.x.shape[0]) if isinstance(t.monitor, COMonitor) else t.cfg.batch_size,
        "world_size": t.dist.world_size, "device": device, "ops_backend": ops.get_backend(), "malloc": t.malloc,
        "versions": {"fastat": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     "cuda": torch.version.cuda},
        "started_at_epoch": t.epoch,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if t.out is not None and t.dist.is_main:
        t.out.mkdir(parents=True, exist_ok=True)
        (t.out / "run.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest
