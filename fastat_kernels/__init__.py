"""Triton kernels for fastat's hot paths, registered as `torch.ops.fastat_triton.<op>` custom ops.

Importing this package never imports triton: op modules are imported on the first `get` (see `_registry`). Each op
module defines its `@triton.jit` kernel(s), a launcher and `torch.library.custom_op("fastat_triton::<op>",
schema=SCHEMAS[op])` with the fake shared with `fastat::<op>` (python/fastat/ops/_library.py), through
`_common.register`. Kernels are launched directly (no wrap_triton/triton_op: those fail under the interpreter).
`fastat.ops` calls `not_supported_reasons` and `get`; nothing else here is public.

`python -m fastat_kernels._compile_check` compiles every kernel for an H100 without a GPU and checks the PTX.
"""

from __future__ import annotations

import torch

from . import _triton

# op name -> module in this package that registers `fastat_triton::<op>`. Add an op here when its kernel lands.
KERNEL_MODULES: dict[str, str] = {
    "zerograd_step": "zerograd_step",
    "multigrad_step": "multigrad_step",
    "atas_gather": "atas",
    "atas_step": "atas",
    "pgi_step": "pgi",
    "pgd_step": "pgd_step",
}


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
    """The `torch.ops.fastat_triton.<op>` overload; the first call imports (and so registers) every op module."""
    from . import _registry  # noqa: F401  (an import statement, which torch.compile can trace; see _registry)

    return getattr(torch.ops.fastat_triton, op).default
