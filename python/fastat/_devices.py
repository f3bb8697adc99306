"""Device flags of the command lines (`fastat eval --device`, `fastat bench ops --device`): one parser, one wording."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str | None, flag: str = "--device") -> torch.device:
    """cpu, cuda or cuda:N (an existing GPU) from ``name``; None means cuda when available, else cpu. ValueError
    naming ``flag`` otherwise."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{flag} must be cpu, cuda or cuda:N, got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{flag} {name}: no CUDA device is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
