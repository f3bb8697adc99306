"""GradAlign: FGSM plus a gradient-alignment regulariser (tml-epfl/understanding-fast-adv-training `train.py:141-202`,
`sh/exps_diff_eps_*.sh`; methods.md §4)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from .. import ops
from ..batch import BatchInfo
from .base import Method, attack_mode, batch_mean_ce, check_positive, fail, input_grad, leaf, to_unit_box

__all__ = ["GradAlign", "grad_align_lambda", "gradient_alignment"]

# The λ the official CIFAR-10 script passes for ε = 1..16 (/255): 0.02·10^(ε/8) written to 3 decimals.
CIFAR10_LAMBDA = {1: 0.027, 2: 0.036, 3: 0.047, 4: 0.063, 5: 0.084, 6: 0.112, 7: 0.150, 8: 0.200, 9: 0.267,
                  10: 0.356, 11: 0.474, 12: 0.632, 13: 0.843, 14: 1.124, 15: 1.500, 16: 2.000}
LAMBDA_SCHEDULES = ("cifar10", "svhn")


def grad_align_lambda(eps: float, schedule: str = "cifar10") -> float:
    """λ for ε in pixel units: CIFAR-10 0.02·10^(ε·255/8) (the script's table at integer ε·255 ≤ 16), SVHN
    (2.5²/4)·1.6^(ε·255/8). Beyond ε = 16/255 this extrapolates far outside what was tuned (ε = 0.2 gives λ ≈ 5e4)."""
    e = eps * 255
    if schedule == "cifar10":
        k = round(e)
        if k in CIFAR10_LAMBDA and math.isclose(e, k, rel_tol=0, abs_tol=1e-6):
            return CIFAR10_LAMBDA[k]
        return 0.02 * 10 ** (e / 8)
    if schedule == "svhn":
        return 2.5**2 / 4 * 1.6 ** (e / 8)
    fail("GradAlign", ValueError, f"argument 'lam_schedule' must be one of {LAMBDA_SCHEDULES}, got {schedule!r}")


def gradient_alignment(grad1: Tensor, grad2: Tensor) -> Tensor:
    """mean_i cos(grad1_i, grad2_i) over the samples where both gradients are non-zero (NaN if there are none).

    Written as the official code: g/‖g‖ with no ε in the denominator, samples with a zero norm filtered out (here
    by masking, so there is no host sync and no data-dependent shape).
    """
    a, b = grad1.flatten(1).float(), grad2.flatten(1).float()
    sq1, sq2 = a.square().sum(1), b.square().sum(1)
    keep = (sq1 != 0) & (sq2 != 0)
    n1 = torch.where(keep, sq1, 1.0).sqrt()
    n2 = torch.where(keep, sq2, 1.0).sqrt()
    cos = ((a / n1[:, None]) * (b / n2[:, None])).sum(1)
    return torch.where(keep, cos, 0.0).sum() / keep.sum()


class GradAlign(Method):
    """GradAlign: δ = Π_box(Π_ε(δ₀ + α·sign(g₁)); x) and the loss term λ·(1 − mean_i cos(g₁ᵢ, g₂ᵢ)).

    * g₁ = ∇_δ CE_mean(f(max(min(x + δ₀, 1), 0)), y) at δ₀ = 0 (``init="zero"``, every official GradAlign run) or
      δ₀ ~ U(−ε, ε) not box-clipped (``init="random"``). The clip is written with max/min as the official code, so
      the gradient is halved at pixels exactly at 0 or 1; g₁ is kept (detached) for the regulariser.
    * g₂ = ∇_η CE_mean(f(x + η), y), η ~ U(−ε, ε), **not** clipped to [0, 1], with ``create_graph=True`` (double
      backprop: the regulariser's gradient reaches the weights through g₂ only). Computed by `extra_loss`, which
      the trainer adds to CE(f(x_adv), y); it runs in ``attack_bn_mode`` (train by default, as the official code).
    * Samples where ‖g₁ᵢ‖ = 0 or ‖g₂ᵢ‖ = 0 are left out of the mean (NaN if none is left, as in the official code).

    Defaults: α = 1.25ε (``--fgsm_alpha 1.25``; with zero init δ = ε·sign(g₁)), λ = `grad_align_lambda(ε)`
    (``lam_schedule="cifar10"``: 0.2 at ε = 8/255; "svhn" for the SVHN formula); ``lam=0`` disables the regulariser.
    BN: train mode (`train.py:91,153,193`).

    Deviations: the SVHN ramp of α over the first 5 epochs (`train.py:166-168`) is not implemented. The λ formulas
    were tuned for ε ≤ 16/255; beyond that the default extrapolates and a warning asks for an explicit ``lam``.
    Under fp16 no loss scaling is applied to the attack gradients (the official apex code scales, then unscales).
    """

    name = "gradalign"
    keeps_attack_grad = True

    alpha: float
    init: str
    lam: float
    lam_schedule: str

    def __init__(self, *, eps: float, alpha: float | None = None, init: str = "zero", lam: float | None = None,
                 lam_schedule: str = "cifar10", attack_bn_mode: str | None = None) -> None:
        eps = check_positive("GradAlign", "eps", eps)
        if lam is None and lam_schedule in LAMBDA_SCHEDULES:
            lam = grad_align_lambda(eps, lam_schedule)
            if eps * 255 > 16 + 1e-6:
                warnings.warn(f"GradAlign: the default λ extrapolates the official {lam_schedule} schedule (tuned for "
                              f"ε <= 16/255) to ε = {eps:.4g}, giving λ = {lam:.4g}; pass lam= explicitly",
                              stacklevel=2)
        super().__init__(eps=eps, attack_bn_mode=attack_bn_mode, alpha=1.25 * eps if alpha is None else alpha,
                         init=init, lam=lam, lam_schedule=lam_schedule)
        self._grad1: Tensor | None = None
        self._reg: Tensor | None = None

    @property
    def step_from_zero(self) -> bool:  # type: ignore[override]
        return self.init == "zero"

    def check_hparams(self, hp: dict) -> dict:
        if hp["init"] not in ("zero", "random"):
            fail("GradAlign", ValueError, f"argument 'init' must be 'zero' or 'random', got {hp['init']!r}")
        if hp["lam_schedule"] not in LAMBDA_SCHEDULES:
            fail("GradAlign", ValueError, f"argument 'lam_schedule' must be one of {LAMBDA_SCHEDULES}, "
                                          f"got {hp['lam_schedule']!r}")
        lam = hp["lam"]
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (lam >= 0 and math.isfinite(lam)):
            fail("GradAlign", ValueError, f"argument 'lam' must be a finite number >= 0, got {lam!r}")
        return {**hp, "alpha": check_positive("GradAlign", "alpha", hp["alpha"]), "lam": float(lam)}

    def strengthen(self, *, q_step: float = 0.1, alpha_factor: float = 0.8) -> str:
        """GradAlign's own remedy against CO is a stronger alignment term: λ / alpha_factor (λ × 1.25 by default);
        with λ = 0, α is lowered as for FGSM."""
        if self.lam <= 0:
            return super().strengthen(q_step=q_step, alpha_factor=alpha_factor)
        old = self.lam
        self.set_hparams(lam=old / alpha_factor)
        return f"lam {old:.5g} -> {self.lam:.5g}"

    @property
    def grad1(self) -> Tensor | None:
        """g₁ of the last `perturb` (detached, fp32): the gradient the regulariser aligns g₂ with."""
        return self._grad1

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, batch: BatchInfo | None = None) -> Tensor:
        self._check_inputs(x, y)
        xf = x.detach().float()
        if self.init == "zero":
            delta0 = torch.zeros_like(xf)
        else:  # not ops.uniform_init: GA's random start is deliberately not box-clipped
            delta0 = torch.empty_like(xf).uniform_(-self.eps, self.eps, generator=self.generator)
        with self.attacking(model):
            d = leaf(delta0)
            x_in = torch.maximum(torch.minimum(xf + d, xf.new_ones(())), xf.new_zeros(()))
            (grad,) = torch.autograd.grad(batch_mean_ce(model(x_in), y), d)
        self._grad1 = self.attack_grad = grad.detach()
        delta = ops.pgd_step(delta0, grad, xf, self.eps, self.alpha)
        return to_unit_box(xf, delta).to(x.dtype)

    def extra_loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor,
                   batch: BatchInfo | None = None) -> Tensor | None:
        """λ·(1 − mean cos(g₁, g₂)) with a graph to the model's parameters (through g₂); None when λ = 0."""
        if self.lam == 0:
            return None
        if self._grad1 is None or self._grad1.shape != x.shape:
            fail("GradAlign", RuntimeError, "extra_loss needs the gradient of the perturb() call on this batch; "
                                            "call perturb(model, x, y, batch) first")
        xf = x.detach().float()
        eta = torch.empty_like(xf).uniform_(-self.eps, self.eps, generator=self.generator)  # unclipped, as GA
        with attack_mode(model, self.attack_bn_mode), torch.enable_grad():
            grad2 = input_grad(model, leaf(xf + eta), y, create_graph=True)
            reg = self.lam * (1.0 - gradient_alignment(self._grad1, grad2))
        self._reg = reg.detach()
        return reg

    def stats(self) -> dict[str, Tensor]:
        return {} if self._reg is None else {"grad_align_reg": self._reg}
