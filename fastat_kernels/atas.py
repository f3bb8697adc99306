"""`fastat_triton::atas_gather` and `fastat_triton::atas_step`: ATAS's per-example perturbation buffer, fused.

Both address, for sample b, the flipped crop window of ``delta_buf[index[b]]`` (N, C, H+2p, W+2p), contiguous):
element (b, c, i, j) of a (B, C, H, W) tensor maps to delta_buf[index[b], c, off[b,0] + i, off[b,1] + j'] with
j' = W−1−j if flips[b] else j. index and offsets are clamped to the buffer in-kernel, so no value can address memory
outside it (the public wrapper reports bad values on CPU). x, x_adv, grad and the output may have any strides (e.g.
channels_last); they are addressed through their strides, so no layout copy is made. C, H, W and the row length are
constexpr (the divisions by them become multiplies; the interpreter cannot loop to a runtime bound).

atas_step: v = (float)β·v_buf[i] + (float)(1−β)·n2 with n2 = Σ g² summed in fp64 and rounded to fp32 (each product
rounded, then the sum: launches never contract to FMA); α = clamp((1 / (1 + √v / c))·(γ/c), step_min, step_max)
computed as torch does for `scalar / tensor` (reciprocal, then product; IEEE sqrt and division);
x_adv' = clamp(min(max(x_adv + α·sign(g), x − ε), x + ε), 0, 1) and the window gets x_adv' − x. With ``warmup``,
α = ε and v_buf is not touched. Rows of up to `_common.FUSE_MAX_N` elements take one program each (norm, then update);
longer rows write per-tile fp64 partial norms first and update with a (rows, tiles) grid that sums them in a fixed
order, so the result does not depend on the split.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _common as C


@triton.jit
def _row_window(index_ptr, index_stride, offsets_ptr, off_stride0, off_stride1, flips_ptr, flips_stride, row, n_buf,
                H: tl.constexpr, W: tl.constexpr, PAD2: tl.constexpr):
    """(buffer example, first row, first column, flip) of sample ``row``, clamped into the buffer."""
    example = tl.minimum(tl.maximum(tl.load(index_ptr + row * index_stride), 0), n_buf - 1)
    top = tl.minimum(tl.maximum(tl.load(offsets_ptr + row * off_stride0), 0), PAD2)
    left = tl.minimum(tl.maximum(tl.load(offsets_ptr + row * off_stride0 + off_stride1), 0), PAD2)
    flip = tl.load(flips_ptr + row * flips_stride) != 0
    return example, top, left, flip


@triton.jit
def _coords(offs, CH: tl.constexpr, H: tl.constexpr, W: tl.constexpr):
    """(c, i, j) of flat offsets within a (C, H, W) sample, widened to int64 so products with strides never wrap."""
    c = offs // (H * W)
    rest = offs - c * (H * W)
    i = rest // W
    return c.to(tl.int64), i.to(tl.int64), (rest - i * W).to(tl.int64)


@triton.jit
def _buffer_offsets(example, top, left, flip, c, i, j, CH: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                    PAD2: tl.constexpr):
    hp: tl.constexpr = H + PAD2
    wp: tl.constexpr = W + PAD2
    col = left + tl.where(flip, W - 1 - j, j)
    return example * (CH * hp * wp) + (c * hp + top + i).to(tl.int64) * wp + col


@triton.jit
def _atas_gather_kernel(buf_ptr, index_ptr, index_stride, offsets_ptr, off_stride0, off_stride1, flips_ptr,
                        flips_stride, x_ptr, sx0, sx1, sx2, sx3, out_ptr, so0, so1, so2, so3, n_buf,
                        CH: tl.constexpr, H: tl.constexpr, W: tl.constexpr, PAD2: tl.constexpr,
                        INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < CH * H * W
    example, top, left, flip = _row_window(index_ptr, index_stride, offsets_ptr, off_stride0, off_stride1, flips_ptr,
                                           flips_stride, row, n_buf, H, W, PAD2)
    c, i, j = _coords(offs, CH, H, W)
    window = C.load_f32(buf_ptr + _buffer_offsets(example, top, left, flip, c, i, j, CH, H, W, PAD2), mask, INTERPRET)
    x = C.load_f32(x_ptr + row * sx0 + c * sx1 + i * sx2 + j * sx3, mask, INTERPRET)
    out = C.clamp(x + window, 0.0, 1.0)
    tl.store(out_ptr + row * so0 + c * so1 + i * so2 + j * so3, C.cast_to(out, out_ptr.dtype.element_ty, INTERPRET),
             mask=mask)


@triton.jit
def _sq_norm_tile(g_ptr, row, sg0, sg1, sg2, sg3, offs, CH: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                  INTERPRET: tl.constexpr):
    """Per-lane g² (fp64, exact) of one tile."""
    c, i, j = _coords(offs, CH, H, W)
    g = C.load_f32(g_ptr + row * sg0 + c * sg1 + i * sg2 + j * sg3, offs < CH * H * W, INTERPRET).to(tl.float64)
    return g * g


@triton.jit
def _atas_partial_kernel(grad_ptr, sg0, sg1, sg2, sg3, part_ptr, tiles, v_ptr, v_old_ptr, index_ptr, index_stride,
                         n_buf, CH: tl.constexpr, H: tl.constexpr, W: tl.constexpr, INTERPRET: tl.constexpr,
                         BLOCK: tl.constexpr):
    """Long rows: fp64 Σ g² of tile (row, t) into part[row, t]; tile 0 also saves v_buf[index[row]] before the update
    kernel overwrites it (its other programs still need the old value)."""
    row = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    offs = tile * BLOCK + tl.arange(0, BLOCK)
    sq = _sq_norm_tile(grad_ptr, row, sg0, sg1, sg2, sg3, offs, CH, H, W, INTERPRET)
    tl.store(part_ptr + row * tiles + tile, tl.sum(sq, 0))
    if tile == 0:
        example = tl.minimum(tl.maximum(tl.load(index_ptr + row * index_stride), 0), n_buf - 1)
        tl.store(v_old_ptr + row, tl.load(v_ptr + example))


@triton.jit
def _update_tile(buf_ptr, grad_ptr, sg0, sg1, sg2, sg3, xa_ptr, sa0, sa1, sa2, sa3, x_ptr, sx0, sx1, sx2, sx3, out_ptr,
                 so0, so1, so2, so3, row, example, top, left, flip, offs, step, eps, CH: tl.constexpr,
                 H: tl.constexpr, W: tl.constexpr, PAD2: tl.constexpr, INTERPRET: tl.constexpr):
    """x_adv' = clamp(min(max(x_adv + α·sign(g), x − ε), x + ε), 0, 1) on one tile; writes it and x_adv' − x."""
    mask = offs < CH * H * W
    c, i, j = _coords(offs, CH, H, W)
    g = C.load_f32(grad_ptr + row * sg0 + c * sg1 + i * sg2 + j * sg3, mask, INTERPRET)
    xa = C.load_f32(xa_ptr + row * sa0 + c * sa1 + i * sa2 + j * sa3, mask, INTERPRET)
    x = C.load_f32(x_ptr + row * sx0 + c * sx1 + i * sx2 + j * sx3, mask, INTERPRET)
    moved = step * C.sign(g)
    xa = C.clamp(C.clamp(xa + moved, x - eps, x + eps), 0.0, 1.0)
    tl.store(out_ptr + row * so0 + c * so1 + i * so2 + j * so3, C.cast_to(xa, out_ptr.dtype.element_ty, INTERPRET),
             mask=mask)
    buf_offs = _buffer_offsets(example, top, left, flip, c, i, j, CH, H, W, PAD2)
    tl.store(buf_ptr + buf_offs, C.cast_to(xa - x, buf_ptr.dtype.element_ty, INTERPRET), mask=mask)


@triton.jit(do_not_specialize=["tiles"])
def _atas_step_kernel(buf_ptr, v_ptr, v_old_ptr, part_ptr, tiles, index_ptr, index_stride, offsets_ptr, off_stride0,
                      off_stride1, flips_ptr, flips_stride, grad_ptr, sg0, sg1, sg2, sg3, xa_ptr, sa0, sa1, sa2, sa3,
                      x_ptr, sx0, sx1, sx2, sx3, out_ptr, so0, so1, so2, so3, n_buf, eps, c_scale, beta,
                      one_minus_beta, gamma_over_c, step_min, step_max, CH: tl.constexpr, H: tl.constexpr,
                      W: tl.constexpr, PAD2: tl.constexpr, WARMUP: tl.constexpr, SPLIT: tl.constexpr,
                      TILES_P2: tl.constexpr, INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    example, top, left, flip = _row_window(index_ptr, index_stride, offsets_ptr, off_stride0, off_stride1, flips_ptr,
                                           flips_stride, row, n_buf, H, W, PAD2)
    n: tl.constexpr = CH * H * W
    if WARMUP:
        step = eps + tl.zeros([], dtype=tl.float32)
    else:
        if SPLIT:
            t = tl.arange(0, TILES_P2)
            sq = tl.sum(tl.load(part_ptr + row * tiles + t, mask=t < tiles, other=0.0), 0)
            v_old = tl.load(v_old_ptr + row)
        else:
            acc = tl.zeros([BLOCK], dtype=tl.float64)
            for start in range(0, n, BLOCK):
                acc += _sq_norm_tile(grad_ptr, row, sg0, sg1, sg2, sg3, start + tl.arange(0, BLOCK), CH, H, W,
                                      INTERPRET)
            sq = tl.sum(acc, 0)
            v_old = tl.load(v_ptr + example)
        kept = beta * v_old
        added = one_minus_beta * sq.to(tl.float32)
        v = kept + added
        if SPLIT:
            if tl.program_id(1) == 0:
                tl.store(v_ptr + example, v)
        else:
            tl.store(v_ptr + example, v)
        scale = 1.0 + tl.div_rn(tl.sqrt_rn(v), c_scale)
        step = C.clamp(tl.div_rn(1.0, scale) * gamma_over_c, step_min, step_max)
    if SPLIT:
        _update_tile(buf_ptr, grad_ptr, sg0, sg1, sg2, sg3, xa_ptr, sa0, sa1, sa2, sa3, x_ptr, sx0, sx1, sx2, sx3,
                     out_ptr, so0, so1, so2, so3, row, example, top, left, flip,
                     tl.program_id(1) * BLOCK + tl.arange(0, BLOCK), step, eps, CH, H, W, PAD2, INTERPRET)
    else:
        for start in range(0, n, BLOCK):
            _update_tile(buf_ptr, grad_ptr, sg0, sg1, sg2, sg3, xa_ptr, sa0, sa1, sa2, sa3, x_ptr, sx0, sx1, sx2, sx3,
                         out_ptr, so0, so1, so2, so3, row, example, top, left, flip, start + tl.arange(0, BLOCK), step,
                         eps, CH, H, W, PAD2, INTERPRET)


_gather_tuned = triton.autotune(configs=C.elementwise_configs(), key=["CH", "H", "W", "PAD2"])(_atas_gather_kernel)


def _row_args(index: Tensor, offsets: Tensor, flips: Tensor) -> tuple:
    return (index, index.stride(0), offsets, offsets.stride(0), offsets.stride(1), C.as_bytes(flips), flips.stride(0))


def atas_gather(delta_buf: Tensor, index: Tensor, offsets: Tensor, flips: Tensor, x: Tensor) -> Tensor:
    out = torch.empty_like(x)
    rows, chans, height, width = x.shape
    n = chans * height * width
    if out.numel() == 0:
        return out
    args = (delta_buf, *_row_args(index, offsets, flips), x, *x.stride(), out, *out.stride(), delta_buf.shape[0],
            chans, height, width, delta_buf.shape[2] - height, C.interpreting())
    C.launch_tiles(_atas_gather_kernel, _gather_tuned, rows, n, args)
    return out


def atas_step(delta_buf: Tensor, v_buf: Tensor, index: Tensor, offsets: Tensor, flips: Tensor, grad: Tensor,
              x_adv: Tensor, x: Tensor, *, eps: float, c: float, beta: float, gamma_over_c: float, step_min: float,
              step_max: float, warmup: bool) -> Tensor:
    out = torch.empty_like(x_adv)
    rows, chans, height, width = x.shape
    n = chans * height * width
    if out.numel() == 0:
        return out
    split = n > C.FUSE_MAX_N
    block = C.block_size(n, C.TILE_BLOCK if split else C.ROW_BLOCK)
    tiles = triton.cdiv(n, block)
    dev = x.device
    if split and not warmup:
        part = torch.empty((rows, tiles), dtype=torch.float64, device=dev)
        v_old = torch.empty(rows, dtype=torch.float32, device=dev)
        _atas_partial_kernel[(rows, tiles)](grad, *grad.stride(), part, tiles, v_buf, v_old, index, index.stride(0),
                                            delta_buf.shape[0], chans, height, width, C.interpreting(), BLOCK=block,
                                            num_warps=C.warps_for(block), enable_fp_fusion=False)
    else:
        part = v_old = v_buf  # unused pointers
    _atas_step_kernel[(rows, tiles if split else 1)](
        delta_buf, v_buf, v_old, part, tiles, *_row_args(index, offsets, flips), grad, *grad.stride(), x_adv,
        *x_adv.stride(), x, *x.stride(), out, *out.stride(), delta_buf.shape[0], eps, c, beta, 1.0 - beta,
        gamma_over_c, step_min, step_max, chans, height, width, delta_buf.shape[2] - height, warmup, split,
        triton.next_power_of_2(tiles), C.interpreting(), BLOCK=block, num_warps=C.warps_for(block),
        enable_fp_fusion=False)
    return out


atas_gather_op = C.register("atas_gather", atas_gather)
atas_step_op = C.register("atas_step", atas_step)
