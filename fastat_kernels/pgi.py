"""`fastat_triton::pgi_step`: the FGSM-PGI step with its write-back into the per-example prior and momentum buffers.

Windows are addressed as in `atas` (shared helpers): element (b, c, i, j) of a (B, C, H, W) tensor maps to
buf[index[b], c, off[b,0] + i, off[b,1] + j'] with j' = W−1−j if flips[b] else j, index and offsets clamped into the
buffers in-kernel. x, x_adv, grad and the output are addressed through their strides (channels_last needs no copy).
Per element, in fp32 with each operation rounded on its own (launched with `enable_fp_fusion=False`; IEEE division):
d0 = x_adv − x, m = g / l1 + decay·mom, next = box(clamp(d0 + ε·sign(m), −ε, ε), x),
out = clamp(min(max((x + d0) + ε·sign(g), x − ε), x + ε), 0, 1); mom's window gets m, delta_buf's gets next.
l1 (the batch's ‖g‖₁, a 0-dim tensor) is loaded on the device. Grid (rows, tiles of the row). Not autotuned: a
benchmark run would update the momentum buffer once per config.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _common as C
from .atas import _buffer_offsets, _coords, _row_args, _row_window


@triton.jit
def _pgi_step_kernel(delta_ptr, mom_ptr, index_ptr, index_stride, offsets_ptr, off_stride0, off_stride1, flips_ptr,
                     flips_stride, grad_ptr, sg0, sg1, sg2, sg3, l1_ptr, xa_ptr, sa0, sa1, sa2, sa3, x_ptr, sx0, sx1,
                     sx2, sx3, out_ptr, so0, so1, so2, so3, n_buf, eps, decay, CH: tl.constexpr, H: tl.constexpr,
                     W: tl.constexpr, PAD2: tl.constexpr, INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < CH * H * W
    example, top, left, flip = _row_window(index_ptr, index_stride, offsets_ptr, off_stride0, off_stride1, flips_ptr,
                                           flips_stride, row, n_buf, H, W, PAD2)
    c, i, j = _coords(offs, CH, H, W)
    window = _buffer_offsets(example, top, left, flip, c, i, j, CH, H, W, PAD2)
    g = C.load_f32(grad_ptr + row * sg0 + c * sg1 + i * sg2 + j * sg3, mask, INTERPRET)
    xa = C.load_f32(xa_ptr + row * sa0 + c * sa1 + i * sa2 + j * sa3, mask, INTERPRET)
    x = C.load_f32(x_ptr + row * sx0 + c * sx1 + i * sx2 + j * sx3, mask, INTERPRET)
    mom = C.load_f32(mom_ptr + window, mask, INTERPRET)
    l1 = tl.load(l1_ptr)
    d0 = xa - x
    m = tl.div_rn(g, l1) + decay * mom
    nxt = C.box(C.clamp(d0 + eps * C.sign(m), -eps, eps), x)
    out = C.clamp(C.clamp(x + d0 + eps * C.sign(g), x - eps, x + eps), 0.0, 1.0)
    tl.store(mom_ptr + window, C.cast_to(m, mom_ptr.dtype.element_ty, INTERPRET), mask=mask)
    tl.store(delta_ptr + window, C.cast_to(nxt, delta_ptr.dtype.element_ty, INTERPRET), mask=mask)
    tl.store(out_ptr + row * so0 + c * so1 + i * so2 + j * so3, C.cast_to(out, out_ptr.dtype.element_ty, INTERPRET),
             mask=mask)


def pgi_step(delta_buf: Tensor, mom_buf: Tensor, index: Tensor, offsets: Tensor, flips: Tensor, grad: Tensor,
             grad_l1: Tensor, x_adv: Tensor, x: Tensor, *, eps: float, decay: float) -> Tensor:
    out = torch.empty_like(x_adv)
    rows, chans, height, width = x.shape
    if out.numel() == 0:
        return out
    l1 = grad_l1.float()  # torch widens a 0-dim bf16/fp16 divisor to fp32 (exact) before dividing, too
    args = (delta_buf, mom_buf, *_row_args(index, offsets, flips), grad, *grad.stride(), l1, x_adv, *x_adv.stride(), x,
            *x.stride(), out, *out.stride(), delta_buf.shape[0], eps, decay, chans, height, width,
            delta_buf.shape[2] - height, C.interpreting())
    C.launch_tiles(_pgi_step_kernel, None, rows, chans * height * width, args)
    return out


pgi_step_op = C.register("pgi_step", pgi_step)
