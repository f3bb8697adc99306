"""Lazy, guarded load of the compiled extension `fastat._C`.

Importing `fastat._C` runs its static `TORCH_LIBRARY_IMPL` registrations (CPU, and CUDA when it was built with CUDA).
A failure (not built, built against another torch, missing symbols) is recorded once, logged once and reported as a
dispatch reason; it never becomes an import error of `fastat`.
"""

from __future__ import annotations

import functools
import importlib
import logging

import torch

from . import _library  # noqa: F401  (the schemas must exist before _C registers implementations)

_log = logging.getLogger("fastat")
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


@functools.cache
def load_error() -> str | None:
    """None when `fastat._C` is loaded, else why it could not be."""
    try:
        importlib.import_module("fastat._C")
    except Exception as exc:  # ImportError, OSError (undefined symbol), RuntimeError (schema mismatch)
        msg = f"{type(exc).__name__}: {exc}"
        _log.warning("fastat: the compiled extension is unavailable (%s); using the Triton/PyTorch backends", msg)
        return msg
    return None


def has_kernel(op: str, device_type: str) -> bool:
    """Whether `fastat::<op>` has a compiled kernel for ``device_type`` ('cpu' or 'cuda')."""
    key = _DISPATCH_KEYS.get(device_type)
    if key is None or load_error() is not None:
        return False
    return getattr(torch.ops.fastat, op).default.has_kernel_for_dispatch_key(key)


def built_with_cuda() -> bool:
    return load_error() is None and torch.ops.fastat.pgd_step.default.has_kernel_for_dispatch_key("CUDA")
