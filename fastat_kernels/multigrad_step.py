"""`fastat_triton::multigrad_step`: δ = Π_box(Π_ε(α·sign(G)·[|G| ≥ 2·th − S]); x), G = Σ_s sign(g_s), one pass.

Grid (rows, tiles of the row); each program loops over the S starts, so the S gradients are read once and no vote
tensor is materialized. The votes are small integers, exact in fp32. Inputs are read in the output's memory order
(`_common.rowwise_target`); the stacked gradients are copied only when a start's layout differs from it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _common as C


@triton.jit
def _multigrad_step_kernel(grads_ptr, x_ptr, out_ptr, STARTS: tl.constexpr, start_stride, n, min_votes, eps, alpha,
                           INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    base = row * n
    votes = tl.zeros([BLOCK], dtype=tl.float32)
    g_ptr = grads_ptr + base + offs
    for _ in range(STARTS):  # constexpr: the interpreter cannot loop to a runtime bound
        votes += C.sign(C.load_f32(g_ptr, mask, INTERPRET))
        g_ptr += start_stride
    x = C.load_f32(x_ptr + base + offs, mask, INTERPRET)
    step = tl.where(tl.abs(votes) >= min_votes, alpha * C.sign(votes), 0.0)
    d = C.box(C.clamp(step, -eps, eps), x)
    tl.store(out_ptr + base + offs, C.cast_to(d, out_ptr.dtype.element_ty, INTERPRET), mask=mask)


_tuned = triton.autotune(configs=C.elementwise_configs(), key=["n", "STARTS"])(_multigrad_step_kernel)


def _stacked_like(grads: Tensor, like: Tensor) -> Tensor:
    """``grads`` (S, *like.shape) with every start in ``like``'s memory order (any stride between starts)."""
    if tuple(grads.stride()[1:]) == tuple(like.stride()):
        return grads
    out = torch.empty_strided(grads.shape, (like.numel(),) + tuple(like.stride()), dtype=grads.dtype,
                              device=grads.device)
    return out.copy_(grads)


def multigrad_step(grads: Tensor, x: Tensor, eps: float, alpha: float, threshold: int | None = None) -> Tensor:
    out = torch.empty_like(x)
    starts = grads.shape[0]
    rows, n = x.shape[0], C.row_length(x)
    if out.numel() == 0:
        return out
    target, (xx,) = C.row_operands(out, x)
    g = _stacked_like(grads, target)
    th = starts if threshold is None else threshold
    min_votes = float(2 * th - starts)  # a small integer, exact in fp32
    C.launch_tiles(_multigrad_step_kernel, _tuned, rows, n,
                   (g, xx, target, starts, g.stride(0), n, min_votes, eps, alpha, C.interpreting()))
    return C.write_back(out, target)


multigrad_step_op = C.register("multigrad_step", multigrad_step)
