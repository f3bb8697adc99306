"""Guarded load of the compiled extension `fastat._C`, and a plain table of which kernels it registered.

Importing `fastat._C` runs its static `TORCH_LIBRARY_IMPL` registrations (CPU, and CUDA when it was built with CUDA).
It is loaded once, when `fastat.ops` is imported, inside try/except: a failure (not built, built against another torch,
missing symbols) is recorded, logged once and reported as a dispatch reason; it never becomes an import error. The
result is kept in a plain module-level dict because the dispatch functions that read it are traced by Dynamo under
`torch.compile(fullgraph=True)`, which can read a dict but cannot trace an import or `has_kernel_for_dispatch_key`.
Loading the library initializes no CUDA context.
"""

from __future__ import annotations

import importlib
import logging

import torch

from . import _library  # noqa: F401  (the schemas must exist before _C registers implementations)
from ._schemas import SCHEMAS

_log = logging.getLogger("fastat")

# {"error": None or why _C is unavailable, "kernels": {(op, device_type): bool}}
STATE: dict = {"error": None, "kernels": {}}


def _load() -> None:
    try:
        importlib.import_module("fastat._C")
    except Exception as exc:  # ImportError, OSError (undefined symbol), RuntimeError (schema mismatch)
        STATE["error"] = f"{type(exc).__name__}: {exc}"
        _log.warning("fastat: the compiled extension is unavailable (%s); using the Triton/PyTorch backends",
                     STATE["error"])
        return
    for op in SCHEMAS:
        overload = getattr(torch.ops.fastat, op).default
        for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA")):
            STATE["kernels"][(op, device_type)] = overload.has_kernel_for_dispatch_key(key)


def load_error() -> str | None:
    """None when `fastat._C` is loaded, else why it could not be."""
    return STATE["error"]


def has_kernel(op: str, device_type: str) -> bool:
    """Whether `fastat::<op>` has a compiled kernel for ``device_type`` ('cpu' or 'cuda')."""
    return STATE["kernels"].get((op, device_type), False)


def built_with_cuda() -> bool:
    return has_kernel("pgd_step", "cuda")


_load()
