"""Triton kernels for fastat's hot paths, registered as `torch.ops.fastat_triton.<op>` custom ops.

Importing this package never imports triton: op modules are imported lazily by `get`. Each op module defines its
`@triton.jit` kernel(s), a launcher and `torch.library.custom_op("fastat_triton::<op>", schema=SCHEMAS[op])` with the
fake shared with `fastat::<op>` (python/fastat/ops/_library.py). `fastat.ops` calls `not_supported_reasons` and `get`;
nothing else here is public.
"""

from __future__ import annotations

import importlib

import torch

from . import _triton

# op name -> module in this package that registers `fastat_triton::<op>`. Add an op here when its kernel lands.
KERNEL_MODULES: dict[str, str] = {}


def not_supported_reasons(op: str, device_type: str, dtypes: tuple[torch.dtype, ...] = ()) -> list[str]:
    """Why the Triton backend cannot run ``op`` on ``device_type`` tensors; empty when it can."""
    reasons = []
    if op not in KERNEL_MODULES:
        reasons.append(f"fastat_kernels has no Triton kernel for {op}")
    error = _triton.import_error()
    if error is not None:
        reasons.append(error)
    if device_type == "cpu" and not _triton.interpret():
        reasons.append("tensors are on cpu and TRITON_INTERPRET=1 is not set")
    elif device_type not in ("cpu", "cuda"):
        reasons.append(f"tensors on {device_type} are not supported")
    elif device_type == "cuda" and not torch.cuda.is_available():
        reasons.append("no CUDA device is available")
    return reasons


def get(op: str):
    """The `torch.ops.fastat_triton.<op>` overload, importing (and so registering) its module on first use."""
    importlib.import_module(f"{__name__}.{KERNEL_MODULES[op]}")
    return getattr(torch.ops.fastat_triton, op).default
