"""fastat.ops: the hot paths of fast adversarial training, one validated function per op.

Each function checks its arguments (errors name the argument), then runs the implementation chosen by the backend
setting (`use_backend`, `set_backend`, env FASTAT_BACKEND; see `_dispatch`). All implementations follow the contracts
written in `fastat.ops.reference`, which is also the "torch" backend. The ops are not differentiable: inputs are
detached and results never carry a graph (they are attack-step updates). None of them synchronizes with the host, so
a whole attack step can be captured in a CUDA graph.

For kernel packages (`fastat_kernels`, the Triton kernels): `SCHEMAS` (each op's schema), `MUTATES` (the arguments an
op writes in place), `register_fakes(library)` (shape-only implementations for torch.compile) and
`quantile_rank(q, n)` (torch.quantile's rank rule of the installed torch) are the public interface; nothing else of
`fastat.ops` is imported from outside it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _validate, reference
from ._library import register_fakes
from ._schemas import MUTATES
from .reference import quantile_rank
from ._dispatch import (
    BACKENDS,
    available_backends,
    get_backend,
    not_supported_reasons,
    resolve,
    set_backend,
    use_backend,
)
from ._schemas import SCHEMAS

__all__ = [
    "zerograd_step",
    "multigrad_step",
    "atas_gather",
    "atas_step",
    "pgi_step",
    "pgd_step",
    "uniform_init",
    "sora_step",
    "use_backend",
    "set_backend",
    "get_backend",
    "available_backends",
    "not_supported_reasons",
    "BACKENDS",
    "SCHEMAS",
    "reference",
    # the interface a kernel package (fastat_kernels) builds on: schemas, in-place arguments, fakes, the rank rule
    "MUTATES",
    "quantile_rank",
    "register_fakes",
]


def zerograd_step(delta: Tensor, grad: Tensor, x: Tensor, eps: float, alpha: float, q: float) -> Tensor:
    """ZeroGrad: δ' = Π_box(Π_ε(δ + α·sign(g)·[|g| ≥ τ]); x) with τ_i = torch.quantile(|g_i|, q) per sample.

    Args:
        delta: current perturbation (B, ...), fp32/bf16/fp16 (a 1-D tensor is B samples of one element); the
            result has its dtype.
        grad: input gradient, same shape, fp32/bf16/fp16 (τ is computed in fp32 on |grad|).
        x: clean inputs in [0, 1], same shape and dtype as ``delta``.
        eps, alpha: ε > 0 and step α > 0 (ZeroGrad's default is α = 2ε).
        q: quantile in [0, 1]; entries strictly below the per-sample q-quantile of |g| do not move.
    """
    _validate.check_zerograd_step(delta, grad, x, eps, alpha, q)
    impl = resolve("zerograd_step", delta, grad, x)
    return impl(delta.detach(), grad.detach(), x.detach(), float(eps), float(alpha), float(q))


def multigrad_step(grads: Tensor, x: Tensor, eps: float, alpha: float, threshold: int | None = None) -> Tensor:
    """MultiGrad: δ = Π_box(Π_ε(α·sign(G)·[|G| ≥ 2·th − S]); x), G = Σ_s sign(grads[s]).

    Args:
        grads: (S, B, ...) input gradients at S random starts.
        x: clean inputs (B, ...) in [0, 1]; the result has x's dtype.
        eps, alpha: ε > 0 and α > 0 (MultiGrad's default α = 2ε, so agreed entries end at ±ε).
        threshold: th in [1, S]; None means S (unanimous agreement, the official default).
    """
    _validate.check_multigrad_step(grads, x, eps, alpha, threshold)
    impl = resolve("multigrad_step", grads, x)
    return impl(grads.detach(), x.detach(), float(eps), float(alpha), threshold)


def atas_gather(delta_buf: Tensor, index: Tensor, offsets: Tensor, flips: Tensor, x: Tensor) -> Tensor:
    """ATAS start point: x_adv0 = clip(x + flip(crop(delta_buf[index])), 0, 1).

    Args:
        delta_buf: (N, C, H+2p, W+2p) per-example perturbations in the padded, un-augmented frame (contiguous).
        index: (B,) int64 dataset indices; offsets: (B, 2) int64 crop corners (row, col) in [0, 2p];
        flips: (B,) bool horizontal flips; x: (B, C, H, W) augmented clean inputs.
    """
    _validate.check_atas_gather(delta_buf, index, offsets, flips, x)
    _validate.check_atas_values("atas_gather", delta_buf, index, offsets, x)
    impl = resolve("atas_gather", delta_buf, x)
    return impl(delta_buf.detach(), index, offsets, flips, x.detach())


def atas_step(delta_buf: Tensor, v_buf: Tensor, index: Tensor, offsets: Tensor, flips: Tensor, grad: Tensor,
              x_adv: Tensor, x: Tensor, *, eps: float, c: float, beta: float, gamma_over_c: float, step_min: float,
              step_max: float, warmup: bool) -> Tensor:
    """ATAS adaptive step; updates ``v_buf[index]`` and the crop windows of ``delta_buf[index]`` in place.

    v = β·v_buf[index] + (1−β)·‖g_i‖² (unless ``warmup``: step ε, v untouched), α_i = clip(γ/c / (1 + √v/c),
    step_min, step_max), x_adv' = clip(clip(x_adv + α_i·sign(g), x−ε, x+ε), 0, 1); x_adv' − x is written back
    un-flipped into the window. Official defaults (methods.md §6): c=0.01, β=0.5, γ/c=16/255, steps in [4/255, 14/255].
    ``index`` must not repeat within a batch.
    """
    _validate.check_atas_step(delta_buf, v_buf, index, offsets, flips, grad, x_adv, x, eps=eps, c=c, beta=beta,
                              gamma_over_c=gamma_over_c, step_min=step_min, step_max=step_max, warmup=warmup)
    _validate.check_atas_values("atas_step", delta_buf, index, offsets, x)
    impl = resolve("atas_step", delta_buf, grad, x)
    return impl(delta_buf, v_buf, index, offsets, flips, grad.detach(), x_adv.detach(), x.detach(), eps=float(eps),
                c=float(c), beta=float(beta), gamma_over_c=float(gamma_over_c), step_min=float(step_min),
                step_max=float(step_max), warmup=bool(warmup))


def pgi_step(delta_buf: Tensor, mom_buf: Tensor, index: Tensor, offsets: Tensor, flips: Tensor, grad: Tensor,
             grad_l1: Tensor, x_adv: Tensor, x: Tensor, *, eps: float, decay: float) -> Tensor:
    """FGSM-PGI step; updates the crop windows of ``mom_buf[index]`` and ``delta_buf[index]`` in place.

    m = g / ‖g‖₁ + decay·mom (stored), next prior = Π_box(Π_ε(δ₀ + ε·sign(m))) (stored), with δ₀ = x_adv − x;
    returns x_adv' = clip(Π_{x,ε}(x + δ₀ + ε·sign(g)), 0, 1). ``grad_l1`` is the 0-dim ‖g‖₁ of the whole batch (on
    x's device); ``decay`` in [0, 1]. Buffers as atas_step's delta_buf: (N, C, H+2p, W+2p), contiguous, one dtype.
    ``index`` must not repeat within a batch.
    """
    _validate.check_pgi_step(delta_buf, mom_buf, index, offsets, flips, grad, grad_l1, x_adv, x, eps=eps, decay=decay)
    _validate.check_atas_values("pgi_step", delta_buf, index, offsets, x)
    impl = resolve("pgi_step", delta_buf, grad, x)
    return impl(delta_buf, mom_buf, index, offsets, flips, grad.detach(), grad_l1.detach(), x_adv.detach(), x.detach(),
                eps=float(eps), decay=float(decay))


def pgd_step(delta: Tensor, grad: Tensor, x: Tensor, eps: float, alpha: float, active: Tensor | None = None) -> Tensor:
    """PGD step: δ' = Π_box(Π_ε(δ + α·sign(g)); x) on rows where ``active`` (B,) bool is true, δ elsewhere."""
    _validate.check_pgd_step(delta, grad, x, eps, alpha, active)
    impl = resolve("pgd_step", delta, grad, x)
    return impl(delta.detach(), grad.detach(), x.detach(), float(eps), float(alpha), active)


def uniform_init(x: Tensor, eps: float, *, generator: torch.Generator | None = None) -> Tensor:
    """Random start δ₀ = Π_box(U(−ε, ε); x) in x's dtype, drawn from ``generator`` (default: torch's global one)."""
    _validate.check_uniform_init(x, eps, generator=generator)
    impl = resolve("uniform_init", x)
    return impl(x.detach(), float(eps), generator=generator)


def sora_step(delta: Tensor, grad: Tensor, x: Tensor, alpha: Tensor, *,
              generator: torch.Generator | None = None) -> Tensor:
    """SORA step: δ' = Π_box(δ + α·u·sign(g); x), u ~ U[0, 1) per element from ``generator``; no ε-projection.

    Args:
        delta: SORA's start η (B, ...) (any shape), fp32/bf16/fp16; the result has its dtype and is contiguous.
        grad: input gradient at x + δ, same shape, fp32/bf16/fp16.
        x: clean inputs in [0, 1], same shape and dtype as ``delta``.
        alpha: the step α ≥ 0, a 0-dim float tensor on x's device (read on the device: no host sync).
        generator: the draw's generator (default: torch's default generator of x's device).
    """
    _validate.check_sora_step(delta, grad, x, alpha, generator=generator)
    impl = resolve("sora_step", delta, grad, x)
    return impl(delta.detach(), grad.detach(), x.detach(), alpha.detach(), generator=generator)
