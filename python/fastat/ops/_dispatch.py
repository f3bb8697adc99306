"""The single dispatch point: which implementation runs each op call.

Backends: "native" (the compiled extension `torch.ops.fastat.*`: C++ on CPU tensors, CUDA C++ on CUDA tensors),
"triton" (`torch.ops.fastat_triton.*` from the fastat_kernels package) and "torch" (`fastat.ops.reference`, pure
PyTorch). "auto" walks native -> triton -> torch on CUDA tensors (per op, the faster fused backend as measured on a
GPU goes first: `auto_order`, auto_cuda.json) and native -> torch on CPU tensors, and takes the first backend with no
reasons against it. An explicitly requested backend that cannot run raises NotImplementedError with its
reasons; it never falls back silently. The one exception is by design: an op a backend has no kernel for at all
(the random ops, uniform_init and sora_step, under "triton": draws from a torch generator plus elementwise math;
`_schemas.RANDOM_OPS`) follows the auto order.

Reasons look only at metadata (device, dtype), never at values. The choice is a plain module-global dict, which Dynamo
guards (a ContextVar would break `torch.compile(fullgraph=True)`); nothing is chosen at import time beyond reading
FASTAT_BACKEND.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import torch

from . import _native, reference
from ._schemas import RANDOM_OPS

BACKENDS = ("native", "triton", "torch")
CHOICES = BACKENDS + ("auto",)
_AUTO_ORDER = {"cuda": ("native", "triton", "torch"), "cpu": ("native", "torch")}
# Per-op CUDA preference between the two fused backends, as measured by `fastat bench ops --device cuda` and written
# by `python bench/make_table.py <results>` into auto_cuda.json beside this file ({"choice": {op: backend}}). Ops
# it does not name keep _AUTO_ORDER. The other fused backend stays the fallback, then torch.
_AUTO_FILE = os.path.join(os.path.dirname(__file__), "auto_cuda.json")


def _load_auto_preference(path: str = _AUTO_FILE) -> dict[str, str]:
    try:
        with open(path) as f:
            choice = json.load(f).get("choice", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {op: b for op, b in choice.items() if b in ("native", "triton")} if isinstance(choice, dict) else {}


AUTO_PREFERENCE: dict[str, dict[str, str]] = {"cuda": _load_auto_preference()}


def auto_order(op: str, device_type: str) -> tuple[str, ...]:
    """The backends "auto" tries for ``op`` on ``device_type``, in order (the first that supports the inputs runs)."""
    order = _AUTO_ORDER.get(device_type, ("native", "torch"))
    first = AUTO_PREFERENCE.get(device_type, {}).get(op)
    if first is None or first not in order:
        return order
    return (first,) + tuple(b for b in order if b != first)


def _checked(name: str) -> str:
    if name not in CHOICES:
        raise ValueError(f"fastat: backend must be one of {', '.join(CHOICES)}, got {name!r}")
    return name


def _initial_backend() -> str:
    name = os.environ.get("FASTAT_BACKEND", "auto").strip().lower() or "auto"
    if name not in CHOICES:
        raise ValueError(f"fastat: FASTAT_BACKEND must be one of {', '.join(CHOICES)}, got {name!r}")
    return name


_STATE = {"backend": _initial_backend()}


def get_backend() -> str:
    """The current backend choice ("native", "triton", "torch" or "auto")."""
    return _STATE["backend"]


def set_backend(name: str) -> None:
    """Choose the backend for every following op call (process-wide)."""
    _STATE["backend"] = _checked(name)


class use_backend:  # noqa: N801  (used like a function)
    """Set the backend now; used as a context manager it also restores the previous choice on exit.

    >>> fastat.ops.use_backend("torch")          # plain setter
    >>> with fastat.ops.use_backend("native"):   # scoped
    ...     delta = fastat.ops.pgd_step(delta, grad, x, eps, alpha)
    """

    def __init__(self, name: str) -> None:
        self._previous = get_backend()
        set_backend(name)

    def __enter__(self) -> use_backend:
        return self

    def __exit__(self, *exc: object) -> None:
        set_backend(self._previous)

    def __repr__(self) -> str:
        return f"use_backend({get_backend()!r})"


def not_supported_reasons(backend: str, op: str, device: torch.device | str, dtypes: tuple[torch.dtype, ...] = ()) -> list[str]:
    """Why ``backend`` cannot run ``op`` on tensors of ``device``/``dtypes``; empty when it can."""
    device_type = torch.device(device).type
    if backend == "torch":
        return []
    if backend == "native":
        error = _native.load_error()
        if error is not None:
            return [f"fastat._C is not built or failed to load ({error})"]
        if device_type == "cuda" and not _native.built_with_cuda():
            return ["fastat._C was built without CUDA (needs a CUDA build of torch and nvcc at install time)"]
        if not _native.has_kernel(op, device_type):
            return [f"fastat._C has no {device_type} kernel for {op}"]
        return []
    if backend == "triton":
        import fastat_kernels  # lazy: never imports triton itself unless asked for reasons

        return fastat_kernels.not_supported_reasons(op, device_type, dtypes)
    raise ValueError(f"fastat: unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def implementation(backend: str, op: str) -> Callable[..., Any]:
    if backend == "torch":
        return getattr(reference, op)
    if backend == "native":
        return getattr(torch.ops.fastat, op).default
    import fastat_kernels

    return fastat_kernels.get(op)


def resolve(op: str, *tensors: torch.Tensor | None) -> Callable[..., Any]:
    """The implementation of ``op`` for these input tensors under the current backend choice."""
    present = [t for t in tensors if t is not None]
    device = present[0].device
    dtypes = tuple(t.dtype for t in present)
    choice = get_backend()
    if choice != "auto" and _applies(choice, op):
        reasons = not_supported_reasons(choice, op, device, dtypes)
        if reasons:
            shapes = ", ".join(f"{tuple(t.shape)}:{t.dtype}" for t in present)
            raise NotImplementedError(
                f"fastat.{op}: backend {choice!r} cannot run on {device.type} inputs [{shapes}]: " + "; ".join(reasons)
            )
        return implementation(choice, op)
    for backend in auto_order(op, device.type):
        if not not_supported_reasons(backend, op, device, dtypes):
            return implementation(backend, op)
    return implementation("torch", op)


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends that can run every op on ``device`` (default: "cuda" if a GPU is visible, else "cpu")."""
    from ._schemas import SCHEMAS

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return [b for b in BACKENDS if all(not not_supported_reasons(b, op, device) for op in SCHEMAS if _applies(b, op))]


def _applies(backend: str, op: str) -> bool:
    """The random ops have no Triton kernel by design (a draw from a torch generator plus elementwise math; see
    `_schemas.RANDOM_OPS`)."""
    return not (backend == "triton" and op in RANDOM_OPS)
