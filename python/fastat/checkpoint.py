"""fastat checkpoints: one `torch.save`d dict that rebuilds the model and resumes training.

Layout (``format`` = "fastat-checkpoint/1"):

| key            | value                                                                                  |
|----------------|----------------------------------------------------------------------------------------|
| "format"       | "fastat-checkpoint/1"                                                                  |
| "model"        | the model's ``state_dict()``                                                           |
| "model_config" | `fastat.models.build_model` keyword arguments including ``name`` (None: a user model)  |
| "dataset"      | dataset name the model was trained on (e.g. "fashion-mnist", "cifar10")                |
| "eps"          | training ε in [0, 1] pixel units                                                       |
| "epoch"        | last completed epoch (counted from 1; 0 before training)                               |
| anything else  | extras given by the caller: "optimizer", "scheduler", "method", "rng", "ema", ...       |

Files are written atomically (temporary file + rename), so a run killed while saving keeps the previous checkpoint.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "fastat-checkpoint/1"
REQUIRED = ("model", "model_config", "dataset", "eps", "epoch")
RESERVED = ("format",) + REQUIRED

__all__ = ["FORMAT", "CheckpointError", "save_checkpoint", "load_checkpoint", "model_from_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a fastat checkpoint."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist (also a FileNotFoundError)."""


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, model_config: dict[str, Any] | None, dataset: str,
                    eps: float, epoch: int, **extra: Any) -> Path:
    """Write a fastat checkpoint to ``path`` (parent folders are created); returns the path.

    Args:
        model: the module whose ``state_dict()`` is saved (unwrap DDP/compiled models before passing them).
        model_config: `build_model` kwargs including "name", or None for a model fastat cannot rebuild.
        dataset, eps, epoch: what it was trained on, with which ε, and the last completed epoch.
        **extra: more entries (optimizer/scheduler/method state, RNG states, EMA weights, ...); keys in
            ``RESERVED`` are refused.
    """
    clash = sorted(set(extra) & set(RESERVED))
    if clash:
        raise ValueError(f"save_checkpoint: extra keys {clash} are reserved by the checkpoint format")
    if model_config is not None and "name" not in model_config:
        raise ValueError("save_checkpoint: argument 'model_config' must contain 'name' (or be None)")
    ckpt = {"format": FORMAT, "model": model.state_dict(),
            "model_config": None if model_config is None else dict(model_config),
            "dataset": str(dataset), "eps": float(eps), "epoch": int(epoch), **extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu", *,
                    weights_only: bool = True) -> dict[str, Any]:
    """Read a fastat checkpoint; raises `CheckpointError` (a ValueError) naming the path when it is not one.

    ``weights_only=True`` (the default) refuses arbitrary pickled objects; checkpoints written by fastat hold only
    tensors, numbers, strings, lists and dicts.
    """
    path = Path(path)
    if not path.exists():
        raise MissingCheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a directory, expected a file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=weights_only)
    except (MemoryError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as exc:  # junk bytes surface as almost any exception type from the unpickler (KeyError, ...)
        text = str(exc)
        if isinstance(exc, RuntimeError) and zipfile.is_zipfile(path) and "PytorchStreamReader" not in text:
            # a readable torch file that could not be placed (e.g. CUDA tensors on a machine without a GPU)
            raise CheckpointError(f"checkpoint {str(path)!r} cannot be loaded with map_location={map_location!r}: "
                                  f"{_first_line(text, type(exc).__name__)}") from None
        if "WeightsUnpickler error:" in text:  # the unpickler's finding, after torch's "weights_only=False" advice
            text = text.split("WeightsUnpickler error:", 1)[1]
        raise CheckpointError(f"checkpoint {str(path)!r} is not a fastat checkpoint ({type(exc).__name__}: "
                              f"{_first_line(text, 'no message')})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is not a fastat checkpoint (format {found!r}, "
                              f"expected {FORMAT!r})")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks the keys {missing}")
    return ckpt


def _first_line(text: str, default: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), default)


def model_from_checkpoint(ckpt: dict[str, Any], *, strict: bool = True) -> nn.Module:
    """Rebuild the model from ``ckpt["model_config"]`` and load its weights (on the tensors' device)."""
    from .models import build_model

    config = ckpt.get("model_config")
    if not config:
        raise CheckpointError("checkpoint has no model_config (a user model): build the model yourself and call "
                              "model.load_state_dict(ckpt['model'])")
    kwargs = dict(config)
    name = kwargs.pop("name")
    model = build_model(name, **kwargs)
    try:
        model.load_state_dict(ckpt["model"], strict=strict)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not match model {name!r}: "
                              f"{str(exc).strip().splitlines()[0]}") from None
    first = next(iter(ckpt["model"].values()), None)
    if isinstance(first, torch.Tensor):
        model.to(first.device)
    return model
