"""`fastat_triton::zerograd_step`: δ' = Π_box(Π_ε(δ + α·sign(g)·[|g| ≥ τ]); x), τ_i = torch.quantile(|g_i|, q).

τ is exact. With n the row length, rank = q · (n − 1) (fp32 arithmetic before torch 2.14, fp64 from 2.14 on:
`fastat.ops.quantile_rank`), lo = ⌊rank⌋, w = rank − lo (fp32); torch.quantile
takes the lo-th and ⌈rank⌉-th smallest |g| (a, b) and returns its lerp, fmaf(w, b − a, a) for w < 0.5 and
fmaf(w − 1, b − a, b) otherwise. Rank, w and the branch depend only on (n, q), so the host computes them.

The order statistics come from a radix select on the fp32 bit patterns of |g| (monotone for non-negative floats):
four passes over the row, each a 256-bin histogram of the next byte among the elements that share the prefix found
so far, give a = the lo-th smallest exactly (ties included); one more pass counts the elements ≤ a and finds the
smallest element > a, which gives b. A row holding a NaN has τ = NaN (as torch.quantile), so no entry is kept.
No sort anywhere (tl.sort is both slow on the GPU for long rows and unusable in the interpreter).

Rows of up to `_common.FUSE_MAX_N` elements take one program each: select, then update the row (its tiles are still
in L1/L2). Longer rows (ImageNet's 150528) select in one program per row and update with a (rows, tiles) grid.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastat.ops import quantile_rank

from . import _common as C


@triton.jit
def _abs_bits(g_row, offs, mask, INTERPRET: tl.constexpr):
    g = C.load_f32(g_row + offs, mask, INTERPRET)
    return g.to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def _row_tau(g_row, k_lo, coef, N: tl.constexpr, USE_HI: tl.constexpr, NEED_HI: tl.constexpr,
             INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    """torch.quantile of |g_row[:N]| at the plan (k_lo, coef, USE_HI, NEED_HI) computed by `_plan`."""
    bins = tl.arange(0, 256)
    prefix = k_lo * 0  # int32 scalar zero
    rank = k_lo
    top = k_lo * 0  # largest bit pattern: > 0x7F800000 means a NaN
    for level in tl.static_range(4):
        shift = 24 - 8 * level  # constexpr: level is a static_range index
        hist = tl.zeros([256], dtype=tl.int32)
        for start in range(0, N, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < N
            bits = _abs_bits(g_row, offs, mask, INTERPRET)
            if level == 0:
                top = tl.maximum(top, tl.max(tl.where(mask, bits, 0), 0))
                hist += tl.histogram(bits >> shift, 256, mask=mask)
            else:
                same = (bits >> (shift + 8)) == (prefix >> (shift + 8))
                hist += tl.histogram((bits >> shift) & 0xFF, 256, mask=mask & same)
        below = tl.cumsum(hist, 0)  # elements in bins 0..i
        digit = tl.sum((below <= rank).to(tl.int32), 0)  # the rank-th element falls in this bin
        rank -= tl.sum(tl.where(bins < digit, hist, 0), 0)
        prefix = prefix | (digit << shift)
    hi = prefix
    if NEED_HI:  # the next order statistic: another copy of a, or the smallest element above it
        at_most = k_lo * 0
        above = k_lo * 0 + 0x7FFFFFFF
        for start in range(0, N, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < N
            bits = _abs_bits(g_row, offs, mask, INTERPRET)
            at_most += tl.sum((mask & (bits <= prefix)).to(tl.int32), 0)
            above = tl.minimum(above, tl.min(tl.where(mask & (bits > prefix), bits, 0x7FFFFFFF), 0))
        hi = tl.where(at_most > k_lo + 1, prefix, above)
    a = prefix.to(tl.float32, bitcast=True)
    b = hi.to(tl.float32, bitcast=True)
    if USE_HI:
        tau = C.fma_f32(coef, b - a, b, INTERPRET)
    else:
        tau = C.fma_f32(coef, b - a, a, INTERPRET)
    return tl.where(top > 0x7F800000, 0x7FC00000, tau.to(tl.int32, bitcast=True)).to(tl.float32, bitcast=True)


@triton.jit
def _apply(delta_row, g_row, x_row, out_row, offs, mask, tau, eps, alpha, INTERPRET: tl.constexpr):
    g = C.load_f32(g_row + offs, mask, INTERPRET)
    d = C.load_f32(delta_row + offs, mask, INTERPRET)
    x = C.load_f32(x_row + offs, mask, INTERPRET)
    step = tl.where(tl.abs(g) >= tau, alpha * C.sign(g), 0.0)
    d = C.box(C.clamp(d + step, -eps, eps), x)
    tl.store(out_row + offs, C.cast_to(d, out_row.dtype.element_ty, INTERPRET), mask=mask)


@triton.jit(do_not_specialize=["k_lo"])
def _zerograd_fused_kernel(delta_ptr, grad_ptr, x_ptr, out_ptr, k_lo, coef, eps, alpha, N: tl.constexpr,
                           USE_HI: tl.constexpr, NEED_HI: tl.constexpr, INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    base = tl.program_id(0).to(tl.int64) * N
    tau = _row_tau(grad_ptr + base, k_lo, coef, N, USE_HI, NEED_HI, INTERPRET, BLOCK)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        _apply(delta_ptr + base, grad_ptr + base, x_ptr + base, out_ptr + base, offs, offs < N, tau, eps, alpha,
               INTERPRET)


@triton.jit(do_not_specialize=["k_lo"])
def _zerograd_tau_kernel(grad_ptr, tau_ptr, k_lo, coef, N: tl.constexpr, USE_HI: tl.constexpr,
                         NEED_HI: tl.constexpr, INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    tl.store(tau_ptr + row, _row_tau(grad_ptr + row * N, k_lo, coef, N, USE_HI, NEED_HI, INTERPRET, BLOCK))


@triton.jit
def _zerograd_apply_kernel(delta_ptr, grad_ptr, x_ptr, out_ptr, tau_ptr, n, eps, alpha, INTERPRET: tl.constexpr,
                           BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    base = row * n
    _apply(delta_ptr + base, grad_ptr + base, x_ptr + base, out_ptr + base, offs, offs < n, tl.load(tau_ptr + row),
           eps, alpha, INTERPRET)


_SELECT_CONFIGS = [
    triton.Config({"BLOCK": 2048}, num_warps=4),
    triton.Config({"BLOCK": 4096}, num_warps=8),
    triton.Config({"BLOCK": 8192}, num_warps=16),
]
_fused_tuned = triton.autotune(configs=_SELECT_CONFIGS[:2], key=["N", "NEED_HI"])(_zerograd_fused_kernel)
_tau_tuned = triton.autotune(configs=_SELECT_CONFIGS, key=["N", "NEED_HI"])(_zerograd_tau_kernel)
_apply_tuned = triton.autotune(configs=C.elementwise_configs(), key=["n"])(_zerograd_apply_kernel)


def _plan(n: int, q: float) -> tuple[int, float, bool, bool]:
    """(k_lo, coef, use_hi, need_hi) of torch.quantile over n values at q, with the installed torch's rank arithmetic
    (`fastat.ops.quantile_rank`: fp32 before torch 2.14, fp64 from 2.14 on, asked of the running torch)."""
    k_lo, _, w = quantile_rank(q, n)
    use_hi = w >= 0.5
    return k_lo, (w - 1.0 if use_hi else w), use_hi, w > 0.0


def zerograd_step(delta: Tensor, grad: Tensor, x: Tensor, eps: float, alpha: float, q: float) -> Tensor:
    out = torch.empty_like(delta)
    rows, n = delta.shape[0], C.row_length(delta)
    if out.numel() == 0:
        return out
    target, (d, g, xx) = C.row_operands(out, delta, grad, x)
    k_lo, coef, use_hi, need_hi = _plan(n, q)
    interpret = C.interpreting()
    # At least one element per thread: tl.histogram must not see a tile replicated across threads.
    select_block = C.block_size(n, max(C.ROW_BLOCK, 128), min_block=128)
    select_meta = {"BLOCK": select_block, "num_warps": C.warps_for(select_block)}
    if n <= C.FUSE_MAX_N:
        C.launch(_zerograd_fused_kernel, _fused_tuned, (rows,),
                 (d, g, xx, target, k_lo, coef, eps, alpha, n, use_hi, need_hi, interpret), select_meta)
    else:
        tau = torch.empty(rows, dtype=torch.float32, device=delta.device)
        C.launch(_zerograd_tau_kernel, _tau_tuned, (rows,), (g, tau, k_lo, coef, n, use_hi, need_hi, interpret),
                 select_meta)
        C.launch_tiles(_zerograd_apply_kernel, _apply_tuned, rows, n, (d, g, xx, target, tau, n, eps, alpha, interpret))
    return C.write_back(out, target)


zerograd_step_op = C.register("zerograd_step", zerograd_step)
