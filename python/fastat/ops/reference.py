"""Pure-PyTorch reference of every fastat op: the specification every other backend is tested against.

Conventions shared by all ops (docs: ../shared/docs/methods.md §0, docs/ops.md "Op contracts"):

* Rows are samples: dim 0 is the batch, everything after it (C·H·W) is one row.
* Math is fp32 whatever the input dtypes (fp32, bf16, fp16); results are cast to the dtype of ``delta`` (or ``x``).
  Python floats (ε, α, q, ...) are rounded to fp32 once, as torch does for a scalar operand.
* ``box(d, x) = minimum(maximum(d, -x), 1 - x)`` keeps ``x + d`` in [0, 1]. It is written with min/max against
  ``-x`` and ``1 - x`` rather than ``clamp(x + d, 0, 1) - x``, which rounds differently.
* Π_ε (clip to [-ε, ε]) comes before the box (every method except N-FGSM, which does not call these ops with a clip).
* ``sign`` is torch.sign: ``sign(0) = 0`` and, in current torch, ``sign(NaN) = 0`` too, so a zero or NaN gradient
  entry gives no step at that position (pgd_step, atas_step in warm-up) and counts as a zero vote in MultiGrad.
  Masked ops select with ``where``. A ZeroGrad row containing a NaN has τ = NaN (torch.quantile propagates it), keeps
  nothing and only re-projects δ. A NaN gradient entry outside warm-up makes that row's ‖g‖² NaN in atas_step, so
  its v, x_adv' row and buffer window become NaN (garbage in, visible garbage out). In pgi_step a NaN anywhere in
  the batch's gradient makes ‖g‖₁, and so every momentum window of the batch, NaN. NaN in δ or x propagates through
  clamp/min/max.

None of these functions synchronizes with the host or has a data-dependent output shape. Memory traffic is noted per
op (B×n elements, 4-byte fp32): the fused kernels must move about that much; these references move several times more.
"""

from __future__ import annotations

import math
import struct

import torch
from torch import Tensor

__all__ = ["zerograd_step", "multigrad_step", "atas_gather", "atas_step", "pgi_step", "pgd_step", "uniform_init",
           "sora_step", "box", "QUANTILE_RANK_FP64", "quantile_rank"]

def _torch_quantile_rank_fp64() -> bool:
    """Asked of the running torch, not read from its version: in a row of 301 zeros then 700 values 1e6, the rank of
    q = (float)0.3 is 300.0000119, which fp32 rounds to 300.0. torch.quantile returns about 11.9 under the fp64 rule
    and exactly 0 under the fp32 one. The compiled kernels ask the same question the same way (csrc/common.h)."""
    row = torch.zeros(1001, dtype=torch.float32)
    row[301:] = 1e6
    with torch.inference_mode():
        return bool(torch.quantile(row, 0.3).item() > 1.0)


#: torch >= 2.14 computes torch.quantile's rank q·(n−1) in fp64 (pytorch#187574, which lifted the 2^24 size limit);
#: before, in fp32. τ differs by an ulp or so between the two, and rarely the order statistics themselves. Decided
#: once, at import, for every backend that needs ranks (the Triton plan here; the C++/CUDA bindings ask torch the
#: same way and pass (lo, hi, w) to their kernels).
QUANTILE_RANK_FP64: bool = _torch_quantile_rank_fp64()


def _f32(value: float) -> float:
    """``value`` rounded to the nearest fp32, as a Python float (a C++ ``(float)value``)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def quantile_rank(q: float, n: int) -> tuple[int, int, float]:
    """(lo, hi, w): the installed torch's `torch.quantile` over n values at q interpolates between the lo-th and hi-th
    smallest (0-based) with the fp32 weight w. fp32 rank = (float)q·(float)(n−1) before torch 2.14; from 2.14 on
    rank = (double)(float)q·(n−1) and w = (float)(rank − lo) (`QUANTILE_RANK_FP64`, asked of the running torch). The
    kernels use the same rule (csrc/quantile_rank.h, the Triton ZeroGrad plan)."""
    if QUANTILE_RANK_FP64:
        rank = _f32(q) * float(n - 1)
        lo = math.floor(rank)
        return lo, math.ceil(rank), _f32(rank - lo)
    rank = _f32(_f32(q) * float(n - 1))  # the product of two fp32 values is exact in a double, then rounded
    lo = math.floor(rank)
    return lo, math.ceil(rank), rank - lo  # exact, and an fp32 value


def box(d: Tensor, x: Tensor) -> Tensor:
    """Π_box(d; x) = min(max(d, -x), 1 - x), in fp32."""
    return torch.minimum(torch.maximum(d, -x), 1 - x)


def _row_view(t: Tensor, like: Tensor) -> Tensor:
    """Shape a per-row (B,) tensor so it broadcasts against ``like`` (B, ...)."""
    return t.view((t.shape[0],) + (1,) * (like.dim() - 1))


def zerograd_step(delta: Tensor, grad: Tensor, x: Tensor, eps: float, alpha: float, q: float) -> Tensor:
    """ZeroGrad step: δ' = Π_box(Π_ε(δ + α·sign(g)·[|g| ≥ τ]); x), τ_i = torch.quantile(|g_i|, q) per sample.

    τ is `torch.quantile` over the flattened row (linear interpolation, fp32); entries strictly below τ are zeroed and
    ties with τ are kept (ZG `train_cifar.py:55-70`). For n = 3072, q = 0.35 exactly 1075 entries are zeroed when the
    values are distinct. Mask and result are exact: every backend must match this bit for bit.

    Traffic: reads δ, g, x and writes δ' (4 B·n·4 bytes); this reference also sorts each row.
    """
    g = grad.float()
    a = g.abs()
    # NaN in a row -> τ = NaN -> nothing kept; torch.quantile refuses an empty batch
    tau = torch.quantile(a.reshape(a.shape[0], -1), q, dim=1) if a.shape[0] else a.new_empty(0)  # (B,): 1 each
    keep = a >= _row_view(tau, a)
    step = torch.where(keep, alpha * torch.sign(g), 0.0)
    d = torch.clamp(delta.float() + step, -eps, eps)
    return box(d, x.float()).to(delta.dtype)


def multigrad_step(grads: Tensor, x: Tensor, eps: float, alpha: float, threshold: int | None = None) -> Tensor:
    """MultiGrad step: δ = Π_box(Π_ε(α·sign(G)·[|G| ≥ 2·th − S]); x), G = Σ_s sign(g_s), th = S by default.

    ``grads`` is (S, B, ...): the input gradients at S random starts. The default th = S keeps only unanimous signs
    (an exact zero in any start rejects the entry); δ starts from zero, so δ ∈ {−ε, 0, +ε} before the box
    (ZG `train_cifar.py:72-103`). Exact.

    Traffic: reads S gradients and x, writes δ ((S + 2)·B·n·4 bytes).
    """
    s_count = grads.shape[0]
    th = s_count if threshold is None else threshold
    votes = torch.sign(grads.float()).sum(0)  # small integers: exact in fp32
    keep = votes.abs() >= (2 * th - s_count)
    d = torch.clamp(torch.where(keep, alpha * torch.sign(votes), 0.0), -eps, eps)
    return box(d, x.float()).to(x.dtype)


def _window(delta_buf: Tensor, index: Tensor, offsets: Tensor, flips: Tensor, height: int, width: int):
    """Advanced-indexing tuple addressing, for each sample, its flipped crop window of ``delta_buf``.

    Output element (b, c, i, j) maps to delta_buf[index[b], c, a_b + i, b_b + j'] with j' = W-1-j if flips[b] else j,
    so reading through it gives flip(crop(δ_buf[index])) and writing through it un-flips into the window.
    """
    dev = delta_buf.device
    rows = offsets[:, 0:1] + torch.arange(height, device=dev)  # (B, H)
    j = torch.arange(width, device=dev)
    cols = offsets[:, 1:2] + torch.where(flips[:, None], width - 1 - j, j)  # (B, W)
    chans = torch.arange(delta_buf.shape[1], device=dev)
    return index[:, None, None, None], chans[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]


def atas_gather(delta_buf: Tensor, index: Tensor, offsets: Tensor, flips: Tensor, x: Tensor) -> Tensor:
    """ATAS start point: x_adv0 = clip(x + flip(crop(δ_buf[index])), 0, 1).

    ``delta_buf`` (N, C, H+2p, W+2p) holds each example's perturbation in the padded, un-augmented frame; ``offsets``
    (B, 2) are the crop's top-left corners (row, column) in [0, 2p]; ``flips`` (B,) are horizontal flips
    (ATAS `data_aug.py`, methods.md §6.2 step 1). Exact.

    Traffic: reads the B windows and x, writes x_adv0 (3·B·n·4 bytes).
    """
    window = delta_buf[_window(delta_buf, index, offsets, flips, x.shape[2], x.shape[3])]
    return torch.clamp(x.float() + window.float(), 0, 1).to(x.dtype)


def atas_step(
    delta_buf: Tensor,
    v_buf: Tensor,
    index: Tensor,
    offsets: Tensor,
    flips: Tensor,
    grad: Tensor,
    x_adv: Tensor,
    x: Tensor,
    *,
    eps: float,
    c: float,
    beta: float,
    gamma_over_c: float,
    step_min: float,
    step_max: float,
    warmup: bool,
) -> Tensor:
    """ATAS step with per-example step size (methods.md §6.2 steps 3, 4 and 6).

    v_i ← β·v_buf[index_i] + (1−β)·‖g_i‖²  (stored back; skipped when ``warmup``, which uses step ε instead),
    α_i = clip(γ/c / (1 + √v_i / c), step_min, step_max),
    x_adv' = clip(clip(x_adv + α_i·sign(g), x − ε, x + ε), 0, 1),
    and x_adv' − x, un-flipped, is written into the crop window of δ_buf[index] (outside it the buffer keeps its values).
    ‖g_i‖² is accumulated in fp64 and rounded to fp32, so it rarely depends on the summation order (only when the fp64
    sums of two orders round to different fp32 values: inputs built for it in tests/gpu/test_cuda_atas_cases.py); the
    kernels add their partial sums in a fixed order, so a kernel is deterministic, and v_buf matches this reference.
    ``index`` must not repeat within a batch (which write lands is unspecified otherwise). Mutates ``delta_buf`` and
    ``v_buf``; returns x_adv'. Exact apart from the sqrt/divide in α (a few ulp).

    Traffic: reads g, x_adv, x and writes x_adv' and the windows (5·B·n·4 bytes).
    """
    g = grad.float()
    xf = x.float()
    if warmup:
        step = torch.full((g.shape[0],), eps, dtype=torch.float32, device=g.device)
    else:
        sq_norm = g.double().square().sum(dim=(1, 2, 3)).float()
        v = beta * v_buf[index] + (1 - beta) * sq_norm
        v_buf[index] = v
        step = torch.clamp(gamma_over_c / (1 + torch.sqrt(v) / c), step_min, step_max)
    xa = x_adv.float() + _row_view(step, g) * torch.sign(g)
    xa = torch.clamp(torch.minimum(torch.maximum(xa, xf - eps), xf + eps), 0, 1)
    delta_buf[_window(delta_buf, index, offsets, flips, x.shape[2], x.shape[3])] = (xa - xf).to(delta_buf.dtype)
    return xa.to(x_adv.dtype)


def pgi_step(
    delta_buf: Tensor,
    mom_buf: Tensor,
    index: Tensor,
    offsets: Tensor,
    flips: Tensor,
    grad: Tensor,
    grad_l1: Tensor,
    x_adv: Tensor,
    x: Tensor,
    *,
    eps: float,
    decay: float,
) -> Tensor:
    """FGSM-PGI step: the attack from the prior, and the next prior from the momentum of the L1-normalised gradient.

    With δ₀ = x_adv − x (x_adv = clip(x + prior, 0, 1): atas_gather's output) and w the batch's crop windows of the
    per-example buffers (addressed as in atas_gather: flip(crop(buf[index]))):
    m = g / ‖g‖₁ + decay·mom_buf[w]  (stored back into mom_buf's windows),
    δ_next = Π_box(Π_ε(δ₀ + ε·sign(m)); x)  (stored back into delta_buf's windows: the next epoch's prior),
    x_adv' = clip(min(max((x + δ₀) + ε·sign(g), x − ε), x + ε), 0, 1)  (returned: the attack of this step).
    ``grad_l1`` is the 0-dim ‖g‖₁ over the whole batch (torch.norm(x_grad, p=1) in the official code), computed by
    the caller, so the op itself needs no reduction. Official: fzjcdt/FastAT_Benchmark `fast_at/fgsm_pgi.py`
    (~86-104: the momentum, next_delta and delta lines); buffers in the padded, un-augmented frame as in ATAS.
    ``index`` must not repeat within a batch (which write lands is unspecified otherwise). Outside the windows the
    buffers keep their values. Mutates ``delta_buf`` and ``mom_buf``; returns x_adv' in x_adv's dtype.

    Exact: one IEEE division by ‖g‖₁ and separately rounded products and sums. ‖g‖₁ = 0 (an all-zero batch) gives
    0/0 = NaN and a NaN in g a NaN ‖g‖₁: m is then NaN in every window (stored as is), sign(NaN) = 0, so δ_next is
    δ₀ re-projected; x_adv' still moves by sign(g) where g is finite and non-zero.

    Traffic: reads g, x_adv, x and the momentum windows, writes x_adv' and both windows (7·B·n·4 bytes).
    """
    g = grad.float()
    xf = x.float()
    d0 = x_adv.float() - xf
    w = _window(delta_buf, index, offsets, flips, x.shape[2], x.shape[3])
    m = g / grad_l1 + decay * mom_buf[w].float()
    nxt = torch.clamp(torch.clamp(d0 + eps * torch.sign(m), -eps, eps), -xf, 1 - xf)
    xa = torch.clamp(torch.minimum(torch.maximum(xf + d0 + eps * torch.sign(g), xf - eps), xf + eps), 0, 1)
    mom_buf[w] = m.to(mom_buf.dtype)
    delta_buf[w] = nxt.to(delta_buf.dtype)
    return xa.to(x_adv.dtype)


def pgd_step(delta: Tensor, grad: Tensor, x: Tensor, eps: float, alpha: float, active: Tensor | None = None) -> Tensor:
    """PGD step: δ' = Π_box(Π_ε(δ + α·sign(g)); x) on rows where ``active`` (B,) is true; other rows are δ unchanged.

    This is one iteration of WONG/NF/ZG's early-stopping PGD (methods.md §8), where ``active`` marks the samples still
    classified correctly. Exact.

    Traffic: reads δ, g, x and writes δ' (4·B·n·4 bytes).
    """
    d = torch.clamp(delta.float() + alpha * torch.sign(grad.float()), -eps, eps)
    d = box(d, x.float())
    if active is not None:
        d = torch.where(_row_view(active, d), d, delta.float())
    return d.to(delta.dtype)


def uniform_init(x: Tensor, eps: float, *, generator: torch.Generator | None = None) -> Tensor:
    """Random start: δ₀ = Π_box(U(−ε, ε); x), drawn in fp32 with ``generator`` (WONG `train_fgsm.py:101-110`).

    Returned in x's dtype. Backends that use their own random stream (the CUDA Philox kernel) are reproducible for a
    given generator state but not equal to this draw.
    """
    u = torch.empty(x.shape, dtype=torch.float32, device=x.device).uniform_(-eps, eps, generator=generator)
    return box(u, x.float()).to(x.dtype)


def sora_step(delta: Tensor, grad: Tensor, x: Tensor, alpha: Tensor, *,
              generator: torch.Generator | None = None) -> Tensor:
    """SORA's random-scaled step: δ' = Π_box(δ + (α·u)·sign(g); x), u ~ U[0, 1) per element, drawn in fp32 with
    ``generator`` — no ε-projection (SecondOrderAT/SORA `src/attacks/sora.py`, "Second Order Theory Sign":
    ``delta = eta + alpha * interpolation_coeff * grad.sign()`` with ``interpolation_coeff = torch.rand_like(grad)``,
    then the clamp to [lower_limit − x, upper_limit − x]).

    ``delta`` is SORA's start η (uniform_init's output), ``alpha`` a 0-dim float tensor on x's device (SORA's α
    follows a device-side running estimate; it is read on the device, never on the host, and widened to fp32
    exactly); α ≥ 0 is expected but not checked (a check would read the value). u is drawn exactly as
    ``torch.rand(x.shape, dtype=float32)`` draws it (the same numbers for the same generator state), one value per
    element in x's logical (row-major) order. Products and the sum are rounded one at a time, as written: (α·u),
    then ·sign(g) (exact: ±α·u or 0), then δ + that. sign(0) = sign(NaN) = 0, so a zero or NaN gradient entry leaves
    δ there and only re-projects it; NaN in δ, x or α propagates. Returned contiguous in δ's dtype.

    Backends that use their own random stream (the CUDA Philox kernel, the counter scheme of uniform_init) are
    reproducible for a given generator state but not equal to this draw.

    Traffic: reads δ, g, x and writes δ' (4·B·n·4 bytes); this reference also writes and reads u and the temporaries.
    """
    u = torch.empty(x.shape, dtype=torch.float32, device=x.device).uniform_(0, 1, generator=generator)
    step = alpha.float() * u * torch.sign(grad.float())
    return box(delta.float() + step, x.float()).contiguous().to(delta.dtype)
