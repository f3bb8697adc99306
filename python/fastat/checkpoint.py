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

Integrity. Files are written atomically (a temporary file in the same folder, fsync, rename, fsync of the folder), so
a run killed or a disk filled while saving keeps the previous checkpoint whole; `copy_checkpoint` (best.pt,
last_good.pt) does the same. Beside each checkpoint, ``NAME.sha256`` records the SHA-256 and size of the file's
current and previous contents (written before the rename, so a kill between the two still matches one of them);
`load_checkpoint` refuses a file that matches neither — truncated, bit-flipped or replaced — with one line naming it.
A checkpoint without a checksum file (written elsewhere) is read unchecked. Loading is ``weights_only`` by default:
a planted pickle cannot run code.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "fastat-checkpoint/1"
REQUIRED = ("model", "model_config", "dataset", "eps", "epoch")
RESERVED = ("format",) + REQUIRED

__all__ = ["FORMAT", "CheckpointError", "copy_checkpoint", "load_checkpoint", "model_from_checkpoint", "save_checkpoint",
           "state_dict_problem", "verify_checksum"]
CHECKSUM_SUFFIX = ".sha256"


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
    return _write_atomically(Path(path), lambda f: torch.save(ckpt, f))


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a checkpoint file to ``dst`` atomically, with its checksum (best.pt, last_good.pt)."""
    with open(src, "rb") as f_src:
        return _write_atomically(Path(dst), lambda f: shutil.copyfileobj(f_src, f, 1 << 20))


def _write_atomically(path: Path, write) -> Path:
    """``write(file)`` into a temporary file beside ``path``, fsync it, record its checksum, rename it to ``path`` and
    fsync the folder; on any failure (a full disk, a kill) ``path`` keeps its previous content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _record_checksum(path, _digest(Path(tmp)))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _digest(path: Path) -> tuple[str, int]:
    """(SHA-256 hex digest, size in bytes) of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest(), path.stat().st_size


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _read_checksums(path: Path) -> list[tuple[str, int]]:
    """The (digest, size) pairs recorded for ``path``, newest first; [] when there is no (readable) record."""
    try:
        lines = _checksum_path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "sha256" and parts[2].isdigit():
            out.append((parts[1], int(parts[2])))
    return out


def _record_checksum(path: Path, digest: tuple[str, int]) -> None:
    """Write ``NAME.sha256`` (atomically) with the new content's digest and the previous one's."""
    entries = [digest] + [d for d in _read_checksums(path)[:1] if d != digest]
    record = _checksum_path(path)
    fd, tmp = tempfile.mkstemp(prefix=record.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"sha256 {h} {n}\n" for h, n in entries))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, record)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # (Windows cannot open a folder)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def verify_checksum(path: str | os.PathLike) -> None:
    """Raise `CheckpointError` when ``path`` has a checksum record its content matches neither entry of."""
    path = Path(path)
    recorded = _read_checksums(path)
    if not recorded:
        return
    digest, size = _digest(path)
    if any(digest == h for h, _ in recorded):
        return
    expected = recorded[0][1]
    what = (f"truncated: {size} of {expected} bytes" if size < expected else
            "corrupted: its content does not match the SHA-256 recorded when it was written")
    raise CheckpointError(f"checkpoint {str(path)!r} is {what} ({_checksum_path(path).name})")


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
    verify_checksum(path)
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


def state_dict_problem(exc: BaseException) -> str:
    """The first specific finding of a ``load_state_dict`` error (its message opens with a generic "Error(s) in
    loading state_dict for X:" line): which key is missing or unexpected, or which tensor has which shape."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    specific = [line for line in lines if not line.startswith("Error(s) in loading state_dict")]
    text = (specific or lines or [type(exc).__name__])[0]
    return text if len(text) <= 300 else text[:297] + "..."


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
        raise CheckpointError(f"checkpoint weights do not match model {name!r}: {state_dict_problem(exc)}") from None
    first = next(iter(ckpt["model"].values()), None)
    if isinstance(first, torch.Tensor):
        model.to(first.device)
    return model
