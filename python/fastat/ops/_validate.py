"""Argument checks for the public ops: errors name the op, the argument and what was expected.

``check_<op>`` looks only at metadata (types, dtypes, devices, shapes, scalar ranges), so the fakes call it too and it
never synchronizes. ``check_<op>_values`` looks at index/offset values: it runs on CPU tensors always and on CUDA
tensors only when ``FASTAT_DEBUG=1`` (it would sync). Kernels must stay in bounds whatever the values regardless.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from .. import _checks as checks

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_DTYPE_NAMES = "float32, bfloat16 or float16"


def _fail(op: str, exc: type[Exception], msg: str) -> None:
    checks.fail(f"fastat.{op}", exc, msg)


def tensor(op: str, name: str, t: object, *, dtypes: Sequence[torch.dtype] | None = FLOAT_DTYPES, ndim: int | None = None,
           min_ndim: int = 1) -> Tensor:
    if not isinstance(t, Tensor):
        _fail(op, TypeError, f"argument '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        expected = _DTYPE_NAMES if tuple(dtypes) == FLOAT_DTYPES else " or ".join(str(d) for d in dtypes)
        _fail(op, TypeError, f"argument '{name}' must have dtype {expected}, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        _fail(op, ValueError, f"argument '{name}' must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dim() < min_ndim:
        _fail(op, ValueError, f"argument '{name}' must have at least {min_ndim} dimension(s), got shape {tuple(t.shape)}")
    return t


def same_device(op: str, **tensors: Tensor | None) -> None:
    named = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            _fail(op, ValueError, f"argument '{name}' is on {t.device} but '{first_name}' is on {first.device}")


def same_shape(op: str, ref_name: str, ref: Tensor, **tensors: Tensor) -> None:
    for name, t in tensors.items():
        if t.shape != ref.shape:
            _fail(op, ValueError, f"argument '{name}' has shape {tuple(t.shape)} but '{ref_name}' has {tuple(ref.shape)}")


# ε, α and ATAS's step constants are pixel-unit scalars: anything above 1 already spans the [0, 1] box, and values
# near the float32 maximum overflow inside the fp32 kernels (x ± ε, δ + α) into inf - inf = NaN.
MAX_PIXEL_SCALAR = 1e6


def positive(op: str, name: str, value: object) -> float:
    return checks.positive(f"fastat.{op}", name, value, upper=MAX_PIXEL_SCALAR, unit=" (pixel units)")


def in_range(op: str, name: str, value: object, lo: float, hi: float) -> float:
    return checks.in_range(f"fastat.{op}", name, value, lo, hi)


def _nonempty_rows(op: str, name: str, t: Tensor) -> None:
    if t.dim() >= 1 and t.numel() == 0 and t.shape[0] > 0:
        _fail(op, ValueError, f"argument '{name}' has empty samples (shape {tuple(t.shape)})")


def _per_row(op: str, name: str, t: Tensor, batch: int, dtype: torch.dtype, trailing: tuple[int, ...] = ()) -> None:
    tensor(op, name, t, dtypes=(dtype,))
    if tuple(t.shape) != (batch,) + trailing:
        _fail(op, ValueError, f"argument '{name}' must have shape {(batch,) + trailing}, got {tuple(t.shape)}")


# --------------------------------------------------------------------------------------------- per-op metadata checks


def check_elementwise(op: str, delta: Tensor, grad: Tensor, x: Tensor, eps: float, alpha: float) -> None:
    """Shared by zerograd_step and pgd_step: δ, g, x of one shape (B, ...) on one device."""
    tensor(op, "delta", delta)
    tensor(op, "grad", grad)
    tensor(op, "x", x)
    same_shape(op, "delta", delta, grad=grad, x=x)
    same_device(op, delta=delta, grad=grad, x=x)
    if x.dtype != delta.dtype:
        _fail(op, TypeError, f"arguments 'x' ({x.dtype}) and 'delta' ({delta.dtype}) must have the same dtype")
    _nonempty_rows(op, "delta", delta)
    positive(op, "eps", eps)
    positive(op, "alpha", alpha)


def check_zerograd_step(delta: Tensor, grad: Tensor, x: Tensor, eps: float, alpha: float, q: float) -> None:
    check_elementwise("zerograd_step", delta, grad, x, eps, alpha)
    in_range("zerograd_step", "q", q, 0.0, 1.0)
    n = delta[0].numel() if delta.shape[0] > 0 else 0
    if n >= 2**24:
        _fail("zerograd_step", ValueError, f"samples of {n} elements exceed torch.quantile's 2**24 limit")


def check_pgd_step(delta: Tensor, grad: Tensor, x: Tensor, eps: float, alpha: float, active: Tensor | None = None) -> None:
    check_elementwise("pgd_step", delta, grad, x, eps, alpha)
    if active is not None:
        _per_row("pgd_step", "active", active, delta.shape[0], torch.bool)
        same_device("pgd_step", delta=delta, active=active)


def check_multigrad_step(grads: Tensor, x: Tensor, eps: float, alpha: float, threshold: int | None = None) -> None:
    op = "multigrad_step"
    tensor(op, "grads", grads, min_ndim=2)
    tensor(op, "x", x)
    if tuple(grads.shape[1:]) != tuple(x.shape):
        _fail(op, ValueError, f"argument 'grads' must have shape (S, *x.shape) = (S, {', '.join(map(str, x.shape))}), "
                              f"got {tuple(grads.shape)}")
    same_device(op, grads=grads, x=x)
    _nonempty_rows(op, "x", x)
    positive(op, "eps", eps)
    positive(op, "alpha", alpha)
    s_count = grads.shape[0]
    if s_count < 1:
        _fail(op, ValueError, "argument 'grads' must hold at least one start (S >= 1)")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int):
            _fail(op, TypeError, f"argument 'threshold' must be an int or None, got {type(threshold).__name__}")
        if not 1 <= threshold <= s_count:
            _fail(op, ValueError, f"argument 'threshold' must be in [1, S={s_count}], got {threshold}")


def _check_atas_common(op: str, delta_buf: Tensor, index: Tensor, offsets: Tensor, flips: Tensor, x: Tensor) -> None:
    tensor(op, "delta_buf", delta_buf, ndim=4)
    tensor(op, "x", x, ndim=4)
    batch, chans, height, width = x.shape
    n, buf_c, buf_h, buf_w = delta_buf.shape
    if buf_c != chans:
        _fail(op, ValueError, f"argument 'delta_buf' has {buf_c} channels but 'x' has {chans}")
    pad2 = buf_h - height
    if pad2 < 0 or pad2 % 2 or buf_w - width != pad2:
        _fail(op, ValueError, f"argument 'delta_buf' must be (N, C, H+2p, W+2p) for x of (B, C, H, W) = "
                              f"{tuple(x.shape)}, got {tuple(delta_buf.shape)}")
    if n < 1 and batch > 0:
        _fail(op, ValueError, "argument 'delta_buf' holds no examples (N = 0)")
    if not delta_buf.is_contiguous():
        _fail(op, ValueError, "argument 'delta_buf' must be contiguous (it is indexed, and written in place by the "
                              "step ops)")
    if delta_buf.requires_grad and op in ("atas_step", "pgi_step"):
        _fail(op, ValueError, f"argument 'delta_buf' must not require grad ({op} writes it in place)")
    _per_row(op, "index", index, batch, torch.int64)
    _per_row(op, "offsets", offsets, batch, torch.int64, (2,))
    _per_row(op, "flips", flips, batch, torch.bool)
    same_device(op, delta_buf=delta_buf, index=index, offsets=offsets, flips=flips, x=x)


def _check_step_inputs(op: str, grad: Tensor, x_adv: Tensor, x: Tensor) -> None:
    """The step ops' gradient and start point (atas_step, pgi_step): float tensors of x's shape, x_adv in x's dtype."""
    tensor(op, "grad", grad)
    tensor(op, "x_adv", x_adv)
    same_shape(op, "x", x, grad=grad, x_adv=x_adv)
    if x_adv.dtype != x.dtype:
        _fail(op, TypeError, f"arguments 'x_adv' ({x_adv.dtype}) and 'x' ({x.dtype}) must have the same dtype")


def check_atas_gather(delta_buf: Tensor, index: Tensor, offsets: Tensor, flips: Tensor, x: Tensor) -> None:
    _check_atas_common("atas_gather", delta_buf, index, offsets, flips, x)


def check_atas_step(delta_buf: Tensor, v_buf: Tensor, index: Tensor, offsets: Tensor, flips: Tensor, grad: Tensor,
                    x_adv: Tensor, x: Tensor, *, eps: float, c: float, beta: float, gamma_over_c: float,
                    step_min: float, step_max: float, warmup: bool) -> None:
    op = "atas_step"
    _check_atas_common(op, delta_buf, index, offsets, flips, x)
    _check_step_inputs(op, grad, x_adv, x)
    tensor(op, "v_buf", v_buf, dtypes=(torch.float32,), ndim=1)
    if v_buf.shape[0] != delta_buf.shape[0]:
        _fail(op, ValueError, f"argument 'v_buf' must have shape (N,) = ({delta_buf.shape[0]},), got {tuple(v_buf.shape)}")
    if not v_buf.is_contiguous():
        _fail(op, ValueError, "argument 'v_buf' must be contiguous (it is written in place)")
    if v_buf.requires_grad:
        _fail(op, ValueError, "argument 'v_buf' must not require grad (it is written in place)")
    same_device(op, x=x, grad=grad, x_adv=x_adv, v_buf=v_buf)
    positive(op, "eps", eps)
    positive(op, "c", c)
    in_range(op, "beta", beta, 0.0, 1.0)
    positive(op, "gamma_over_c", gamma_over_c)
    positive(op, "step_min", step_min)
    positive(op, "step_max", step_max)
    if step_min > step_max:
        _fail(op, ValueError, f"argument 'step_min' ({step_min}) must be <= 'step_max' ({step_max})")
    if not isinstance(warmup, bool):
        _fail(op, TypeError, f"argument 'warmup' must be a bool, got {type(warmup).__name__}")


def check_pgi_step(delta_buf: Tensor, mom_buf: Tensor, index: Tensor, offsets: Tensor, flips: Tensor, grad: Tensor,
                   grad_l1: Tensor, x_adv: Tensor, x: Tensor, *, eps: float, decay: float) -> None:
    op = "pgi_step"
    _check_atas_common(op, delta_buf, index, offsets, flips, x)
    _check_step_inputs(op, grad, x_adv, x)
    # One dtype for both buffers: the kernels are instantiated per buffer dtype, not per pair.
    tensor(op, "mom_buf", mom_buf, ndim=4)
    if mom_buf.dtype != delta_buf.dtype:
        _fail(op, TypeError, f"arguments 'mom_buf' ({mom_buf.dtype}) and 'delta_buf' ({delta_buf.dtype}) must have the "
                             "same dtype")
    if mom_buf.shape != delta_buf.shape:
        _fail(op, ValueError, f"argument 'mom_buf' has shape {tuple(mom_buf.shape)} but 'delta_buf' has "
                              f"{tuple(delta_buf.shape)}")
    if not mom_buf.is_contiguous():
        _fail(op, ValueError, "argument 'mom_buf' must be contiguous (it is indexed, and written in place)")
    if mom_buf.requires_grad:
        _fail(op, ValueError, "argument 'mom_buf' must not require grad (it is written in place)")
    tensor(op, "grad_l1", grad_l1, ndim=0, min_ndim=0)
    same_device(op, x=x, grad=grad, x_adv=x_adv, mom_buf=mom_buf, grad_l1=grad_l1)
    positive(op, "eps", eps)
    in_range(op, "decay", decay, 0.0, 1.0)


def _generator(op: str, generator: torch.Generator | None, x: Tensor) -> None:
    """The random ops' ``generator``: None (the default generator of x's device) or a torch.Generator of x's device."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        _fail(op, TypeError, f"argument 'generator' must be a torch.Generator, got {type(generator).__name__}")
    g = generator.device
    if g.type != x.device.type or (g.index is not None and x.device.index is not None and g.index != x.device.index):
        _fail(op, ValueError, f"argument 'generator' is on {g} but 'x' is on {x.device}: pass a generator of x's "
                              "device")


def check_uniform_init(x: Tensor, eps: float, *, generator: torch.Generator | None = None) -> None:
    tensor("uniform_init", "x", x, min_ndim=0)
    positive("uniform_init", "eps", eps)
    _generator("uniform_init", generator, x)


def check_sora_step(delta: Tensor, grad: Tensor, x: Tensor, alpha: Tensor, *,
                    generator: torch.Generator | None = None) -> None:
    """Elementwise, any shape (0-D and empty included), like uniform_init; α a 0-dim float tensor on x's device."""
    op = "sora_step"
    tensor(op, "delta", delta, min_ndim=0)
    tensor(op, "grad", grad, min_ndim=0)
    tensor(op, "x", x, min_ndim=0)
    same_shape(op, "delta", delta, grad=grad, x=x)
    if x.dtype != delta.dtype:
        _fail(op, TypeError, f"arguments 'x' ({x.dtype}) and 'delta' ({delta.dtype}) must have the same dtype")
    tensor(op, "alpha", alpha, ndim=0, min_ndim=0)
    same_device(op, x=x, delta=delta, grad=grad, alpha=alpha)
    _generator(op, generator, x)


# ----------------------------------------------------------------------------------------------------- value checks


def values_checked(*tensors: Tensor) -> bool:
    """Value checks run on CPU tensors, and on CUDA tensors only under FASTAT_DEBUG=1 (they synchronize) outside
    CUDA-graph capture."""
    if torch.compiler.is_compiling() or any(t.device.type == "meta" for t in tensors):  # meta: no values
        return False
    if all(t.device.type == "cpu" for t in tensors):
        return True
    if any(t.is_cuda for t in tensors) and torch.cuda.is_current_stream_capturing():  # a capture cannot read values
        return False
    return os.environ.get("FASTAT_DEBUG", "0") == "1"


def check_atas_values(op: str, delta_buf: Tensor, index: Tensor, offsets: Tensor, x: Tensor) -> None:
    if index.numel() == 0 or not values_checked(index, offsets):
        return
    n = delta_buf.shape[0]
    pad2 = delta_buf.shape[2] - x.shape[2]
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= n:
        _fail(op, ValueError, f"argument 'index' must be in [0, N={n}), got values in [{lo}, {hi}]")
    olo, ohi = int(offsets.min()), int(offsets.max())
    if olo < 0 or ohi > pad2:
        _fail(op, ValueError, f"argument 'offsets' must be in [0, 2p={pad2}], got values in [{olo}, {ohi}]")
