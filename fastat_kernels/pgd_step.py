"""`fastat_triton::pgd_step`: δ' = Π_box(Π_ε(δ + α·sign(g)); x) on active rows, δ elsewhere (one fused pass).

Grid (rows, tiles of the row). A row whose ``active`` flag is false copies δ as stored (bit for bit) and reads neither
g nor x. Inputs are read in the output's memory order (`_common.rowwise_target`), so channels_last needs no copy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _common as C


@triton.jit
def _pgd_step_kernel(delta_ptr, grad_ptr, x_ptr, out_ptr, active_ptr, active_stride, n, eps, alpha,
                     HAS_ACTIVE: tl.constexpr, INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    base = row * n
    d_raw = tl.load(delta_ptr + base + offs, mask=mask, other=0.0)
    is_active = True
    if HAS_ACTIVE:
        is_active = tl.load(active_ptr + row * active_stride) != 0
    if is_active:
        g = C.load_f32(grad_ptr + base + offs, mask, INTERPRET)
        x = C.load_f32(x_ptr + base + offs, mask, INTERPRET)
        d = C.clamp(C.to_f32(d_raw, INTERPRET) + alpha * C.sign(g), -eps, eps)
        tl.store(out_ptr + base + offs, C.cast_to(C.box(d, x), out_ptr.dtype.element_ty, INTERPRET), mask=mask)
    else:
        tl.store(out_ptr + base + offs, d_raw, mask=mask)


_tuned = triton.autotune(configs=C.elementwise_configs(), key=["n", "HAS_ACTIVE"])(_pgd_step_kernel)


def pgd_step(delta: Tensor, grad: Tensor, x: Tensor, eps: float, alpha: float, active: Tensor | None = None) -> Tensor:
    out = torch.empty_like(delta)
    rows, n = delta.shape[0], C.row_length(delta)
    if out.numel() == 0:
        return out
    target, (d, g, xx) = C.row_operands(out, delta, grad, x)
    has_active = active is not None
    flags = C.as_bytes(active) if has_active else d  # any pointer when unused
    stride = active.stride(0) if has_active else 0
    C.launch_tiles(_pgd_step_kernel, _tuned, rows, n,
                   (d, g, xx, target, flags, stride, n, eps, alpha, has_active, C.interpreting()))
    return C.write_back(out, target)


pgd_step_op = C.register("pgd_step", pgd_step)
