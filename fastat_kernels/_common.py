"""Shared pieces of the Triton kernels: NaN-propagating element math (`@triton.jit`), layouts, launch and registration.

Element math follows what torch computes in python/fastat/ops/reference.py: torch.sign is (0 < v) - (v < 0), so
sign(NaN) = sign(±0) = +0 (a NaN gradient entry gives no step), and min/max/clamp propagate NaN (`PropagateNan.ALL`:
max.NaN on the GPU, numpy's maximum in the interpreter). The sign of a zero result is not part of the contract
(torch's own CPU kernels disagree on it between their vector and scalar paths); tests compare with `torch.equal`.
Every kernel is launched with `enable_fp_fusion=False` so that no product feeding a sum is contracted into an FMA;
the one FMA the contracts ask for (torch.quantile's lerp) is written explicitly.

Only op modules import this module (it imports triton); `import fastat_kernels` stays triton-free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastat.ops import MUTATES, SCHEMAS, register_fakes

from . import _triton

NAMESPACE = "fastat_triton"
LIB = torch.library.Library(NAMESPACE, "FRAGMENT")

# Launch shapes when autotuning is off (always under the interpreter; FASTAT_TRITON_AUTOTUNE=0 on the GPU). Benchmarks
# may change them; tests shrink them to reach the multi-tile paths with small shapes.
# Rows up to FUSE_MAX_N elements take one program per row (select or reduce, then update, in one kernel); longer rows
# use a per-row kernel for the row's scalar and a (rows, tiles) grid for the update.
FUSE_MAX_N = 16384
ROW_BLOCK = 4096  # tile of the loops that walk a whole row in one program
TILE_BLOCK = 2048  # tile of the (rows, tiles) kernels


# ------------------------------------------------------------------------------------------------ element math


@triton.jit
def sign(v):
    """torch.sign, which is (0 < v) - (v < 0): ±1, and +0 for ±0 and for NaN."""
    return tl.where(v > 0, 1.0, 0.0) - tl.where(v < 0, 1.0, 0.0)


@triton.jit
def vmax(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def vmin(a, b):
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def clamp(v, lo, hi):
    """torch.clamp(v, lo, hi) = min(max(v, lo), hi), NaN propagating."""
    return vmin(vmax(v, lo), hi)


@triton.jit
def box(d, x):
    """Π_box(d; x) = min(max(d, -x), 1 - x)."""
    return vmin(vmax(d, -x), 1.0 - x)


@triton.jit
def fma_f32(a, b, c, EMULATE: tl.constexpr):
    """fmaf(a, b, c): one rounding of a·b + c.

    The interpreter's `tl.fma` rounds the product first (it is numpy `a * b + c`), so there the exact FMA is built
    from fp64: a·b is exact in fp64, the sum is rounded to odd (TwoSum error, then the odd neighbour) and rounding
    that to fp32 gives the correctly rounded result (53 ≥ 24 + 2 bits). On the GPU `tl.fma` is the fma.rn instruction.
    """
    if EMULATE:
        p = tl.cast(a, tl.float64) * tl.cast(b, tl.float64)  # tl.cast: a may be a Python float here
        c64 = tl.cast(c, tl.float64)
        s = p + c64
        t = s - p
        err = (p - (s - t)) + (c64 - t)
        bits = s.to(tl.int64, bitcast=True)
        finite = (bits & 0x7FF0000000000000) != 0x7FF0000000000000
        to_odd = finite & (err != 0.0) & ((bits & 1) == 0)
        away = (err > 0.0) == (s > 0.0)  # exact value is farther from zero than s
        bits = tl.where(to_odd, tl.where(away, bits + 1, bits - 1), bits)
        return bits.to(tl.float64, bitcast=True).to(tl.float32)
    else:
        return tl.fma(a, b, c)


@triton.jit
def to_f32(v, INTERPRET: tl.constexpr):
    """``v`` (fp32, bf16 or fp16) as fp32, exactly. The interpreter (triton 3.6) flushes bf16 subnormals when widening,
    so there a bf16 value is widened on its bit pattern (bf16 is the top half of an fp32)."""
    out = v.to(tl.float32)
    if INTERPRET:
        if v.dtype == tl.bfloat16:
            out = (v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return out


@triton.jit
def load_f32(ptrs, mask, INTERPRET: tl.constexpr):
    """Masked load widened to fp32 (masked-off lanes are 0)."""
    return to_f32(tl.load(ptrs, mask=mask, other=0.0), INTERPRET)


@triton.jit
def cast_to(v, dtype: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 ``v`` rounded to ``dtype`` (nearest even), as torch's `.to(dtype)`.

    The interpreter (triton 3.6) truncates fp32 -> bf16, so there the rounding is done on the bit pattern.
    """
    out = v.to(dtype)
    if INTERPRET:
        if dtype == tl.bfloat16:
            bits = v.to(tl.uint32, bitcast=True)
            rounded = (bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16
            rounded = tl.where(v != v, (bits >> 16) | 0x40, rounded)  # NaN stays a (quiet) NaN
            out = rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return out


# ------------------------------------------------------------------------------------------------ host helpers


def row_length(t: Tensor) -> int:
    """Elements per sample (dim 0 is the batch)."""
    n = 1
    for size in t.shape[1:]:
        n *= size
    return n


def _rows_are_blocks(t: Tensor) -> bool:
    """Whether each sample of the dense tensor ``t`` occupies one contiguous block of memory (dim 0 outermost)."""
    return t.shape[0] <= 1 or t.stride(0) == row_length(t)


def same_layout(t: Tensor, like: Tensor) -> Tensor:
    """``t`` with exactly ``like``'s strides (a copy only when they differ)."""
    if t.stride() == like.stride():
        return t
    return torch.empty_like(like, dtype=t.dtype).copy_(t)


def rowwise_target(out: Tensor) -> Tensor:
    """Where a row-wise kernel writes: ``out`` (= empty_like(delta), dense) when its samples are contiguous blocks,
    as for contiguous and channels_last tensors, else a contiguous temporary the caller copies into ``out``.

    Row-wise kernels then read every input in the target's memory order (`same_layout`), so a channels_last batch is
    processed in place without a transpose: the ops are elementwise within a sample, and the ZeroGrad quantile does not
    depend on the order of a sample's elements.
    """
    return out if _rows_are_blocks(out) else torch.empty(out.shape, dtype=out.dtype, device=out.device)


def as_bytes(flags: Tensor) -> Tensor:
    """A bool tensor viewed as uint8 (kernels read 0/1 bytes; no copy)."""
    return flags.view(torch.uint8)


def block_size(n: int, max_block: int, min_block: int = 16) -> int:
    """A power-of-two tile for rows of ``n`` elements, at most ``max_block``."""
    return max(min_block, min(max_block, triton.next_power_of_2(max(n, 1))))


def warps_for(block: int) -> int:
    return 4 if block <= 1024 else 8


def elementwise_configs() -> list[triton.Config]:
    """Autotune space of the (rows, tiles) kernels, keyed on the row length (GPU only)."""
    return [
        triton.Config({"BLOCK": 1024}, num_warps=4),
        triton.Config({"BLOCK": 2048}, num_warps=4),
        triton.Config({"BLOCK": 2048}, num_warps=8),
        triton.Config({"BLOCK": 4096}, num_warps=8),
    ]


def interpreting() -> bool:
    """Passed to kernels as the INTERPRET constexpr (exact FMA and bf16 conversions are emulated there)."""
    return _triton.interpret()


def launch(kernel, tuned, grid: Callable, args: Sequence, default: dict) -> None:
    """Run ``tuned`` (an autotuner over ``kernel``) when autotuning is on, else ``kernel`` with ``default`` meta.

    ``grid`` gets the launch's meta dict (it may read BLOCK). FP contraction is off for every launch.
    """
    if tuned is not None and _triton.autotune_enabled():
        tuned[grid](*args, enable_fp_fusion=False)
    else:
        kernel[grid](*args, **default, enable_fp_fusion=False)


def launch_tiles(kernel, tuned, rows: int, n: int, args: Sequence) -> None:
    """`launch` over a (row, tile) grid covering ``rows`` × ``n`` elements in BLOCK-sized tiles (TILE_BLOCK by
    default; the autotuner's BLOCK on a GPU)."""
    block = block_size(n, TILE_BLOCK)

    def grid(meta):
        return (rows, triton.cdiv(n, meta["BLOCK"]))

    launch(kernel, tuned, grid, args, {"BLOCK": block, "num_warps": warps_for(block)})


def row_operands(out: Tensor, *inputs: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The row-wise ops' layout plan: the tensor to write (`rowwise_target` of ``out``) and ``inputs`` in its memory
    order (`same_layout`). Pair with `write_back`."""
    target = rowwise_target(out)
    return target, tuple(same_layout(t, target) for t in inputs)


def write_back(out: Tensor, target: Tensor) -> Tensor:
    """``out`` holding what the kernel wrote into ``target`` (a copy only when `rowwise_target` needed a temporary)."""
    if target is not out:
        out.copy_(target)
    return out


def register(op: str, impl: Callable) -> Callable:
    """Define `fastat_triton::<op>` from the shared schema with ``impl`` as its kernel, plus the shared fake."""
    schema = SCHEMAS[op].removeprefix(op)  # custom_op takes the signature without the name
    custom = torch.library.custom_op(f"{NAMESPACE}::{op}", mutates_args=MUTATES[op], schema=schema)(impl)
    register_fakes(NAMESPACE, LIB, names=[op])
    return custom
