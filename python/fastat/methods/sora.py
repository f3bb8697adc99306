"""SORA: a random-scaled single step whose size follows a running estimate of the loss's linearity (Teymourian et al.,
ICML 2026; SecondOrderAT/SORA `src/attacks/sora.py`, `src/training/train.py`, `src/attacks/attack_params.py`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .. import distributed as dist_
from .. import ops
from ..batch import BatchInfo
from .base import Method, check_positive, check_range, fail, input_grad, leaf, to_unit_box

__all__ = ["SORA", "linearity_coefficient", "sora_step_size"]


def linearity_coefficient(attack_grad: Tensor, train_grad: Tensor) -> Tensor:
    """mean_i ⟨sign(g₁ᵢ), g₂ᵢ⟩ / max(‖g₁ᵢ‖₁, 1e-12) — SORA's "Second Order Theory Sign" coefficient
    (`src/training/linearity_coef.py`): 1 when the loss is linear between the attack's start point (where g₁ was
    taken) and the training point (g₂, the training loss's input gradient), smaller as it curves. A 0-dim fp32
    tensor (no host sync)."""
    g1, g2 = attack_grad.flatten(1).float(), train_grad.flatten(1).float()
    return ((g1.sign() * g2).sum(1) / g1.abs().sum(1).clamp_min(1e-12)).mean()


def sora_step_size(alpha_max: float, rho: Tensor, slack: float) -> Tensor:
    """α = α_max · min(1, slack / (1 − ρ)), and α_max at ρ = 1 (`sora_max_alpha_function`)."""
    coef = torch.where(rho >= 1, torch.ones_like(rho), (slack / (1 - rho).clamp_min(1e-12)).clamp(max=1.0))
    return alpha_max * coef


class SORA(Method):
    """SORA: η = Π_box(U(−ε, ε); x), δ = Π_box(η + α·u ⊙ sign(∇_η CE_mean(f(x + η), y)); x), u ~ U(0, 1) per
    element, with α = α_max·min(1, 0.02 / (1 − ρ)).

    * No ε-projection after the step, as in the official code (only the box clamp): ‖δ‖∞ ≤ ε + α_max = 3ε.
    * ρ, the linearity coefficient, is an EMA over steps: ρ ← (1 − θ)ρ + θ·clip(ℓ, −1, 1) with ℓ =
      `linearity_coefficient`(g₁, g₂) of the last batch: g₁ the attack's input gradient, g₂ the training loss's
      input gradient at x + δ, which the training backward computes anyway (the trainer hands it over through
      `observe_train_grad`). ρ starts at 0.99, so the first steps take α = α_max.

    Defaults (`attack_params.py:13-17`, `train.py:55-59`): α_max = 2ε, ρ₀ = 0.99, θ = 0.05, slack 0.02, the
    "Second Order Theory Sign" (ℓ∞) variant. BN: train mode during the attack (the official model stays in train
    mode). Deviations: ρ is updated right after each step's backward rather than before the next attack (the same
    numbers); it stays on the device (the official code reads it on the host every step); the attack builds no
    weight gradients; under torchrun each step's ℓ is averaged over the ranks so every replica keeps the same ρ.
    The step is two fused ops: `uniform_init` draws η, `sora_step` draws u and takes the step into the box (one
    launch on CUDA: draw, scale, step, clamp; issue 22). On CPU u is torch.rand's draw; sora_step's CUDA kernel
    draws its own Philox stream and has no GPU measurement yet.
    """

    name = "sora"
    keeps_attack_grad = True
    needs_train_grad = True
    pixel_hparams = ("alpha_max",)
    alpha_max: float
    rho_init: float
    theta: float
    slack: float

    def __init__(self, *, eps: float, alpha_max: float | None = None, rho_init: float = 0.99, theta: float = 0.05,
                 slack: float = 0.02, attack_bn_mode: str | None = None) -> None:
        eps = check_positive("SORA", "eps", eps)
        super().__init__(eps=eps, attack_bn_mode=attack_bn_mode, alpha_max=2 * eps if alpha_max is None else alpha_max,
                         rho_init=rho_init, theta=theta, slack=slack)
        self.rho: Tensor | None = None  # allocated on x's device at the first step (or by load_state_dict)

    def check_hparams(self, hp: dict) -> dict:
        return {**hp, "alpha_max": check_positive("SORA", "alpha_max", hp["alpha_max"]),
                "rho_init": check_range("SORA", "rho_init", hp["rho_init"], -1.0, 1.0),
                "theta": check_range("SORA", "theta", hp["theta"], 0.0, 1.0),
                "slack": check_positive("SORA", "slack", hp["slack"])}

    def _rho(self, device: torch.device) -> Tensor:
        if self.rho is None:
            self.rho = torch.tensor(float(self.rho_init), dtype=torch.float32, device=device)
        elif self.rho.device != device:
            self.rho = self.rho.to(device)
        return self.rho

    @property
    def radius(self) -> float:
        """The ℓ∞ radius x_adv can reach: ε + α_max (the step is not projected back onto the ε-ball)."""
        return self.eps + self.alpha_max

    def step_size(self) -> Tensor | None:
        """The α the next step takes (a 0-dim device tensor), None before the first step."""
        return None if self.rho is None else sora_step_size(self.alpha_max, self.rho, self.slack)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, batch: BatchInfo | None = None) -> Tensor:
        self._check_inputs(x, y)
        xf = x.detach().float()
        alpha = sora_step_size(self.alpha_max, self._rho(xf.device), self.slack)
        eta = ops.uniform_init(xf, self.eps, generator=self.generator)
        with self.attacking(model):
            grad = input_grad(model, leaf(xf + eta), y)
        self.attack_grad = grad
        delta = ops.sora_step(eta, grad, xf, alpha, generator=self.generator)  # the box only: no ε-projection
        return to_unit_box(xf, delta).to(x.dtype)

    def observe_train_grad(self, grad: Tensor) -> None:
        if self.attack_grad is None or self.attack_grad.shape != grad.shape:
            fail("SORA", RuntimeError, "observe_train_grad needs the attack gradient of this batch: call perturb first")
        coef = linearity_coefficient(self.attack_grad, grad)
        world = dist_.current()
        if world.enabled:  # one ρ for all replicas: the mean of the ranks' coefficients
            coef = dist_.all_reduce_sum(coef.reshape(1))[0] / world.world_size
        rho = self._rho(grad.device)
        rho.mul_(1 - self.theta).add_(self.theta * coef.clamp(-1.0, 1.0))

    def strengthen(self, *, q_step: float = 0.1, alpha_factor: float = 0.8) -> str:
        """After a CO roll-back: α_max × alpha_factor."""
        old = float(self.alpha_max)
        self.set_hparams(alpha_max=old * alpha_factor)
        return f"alpha_max {old:.5g} -> {self.alpha_max:.5g}"

    def stats(self) -> dict[str, Tensor]:
        alpha = self.step_size()
        return {} if alpha is None else {"alpha_over_eps": alpha / self.eps, "rho": self.rho.clone()}

    def _state(self) -> dict[str, Any]:
        return {"rho": None if self.rho is None else self.rho.detach().clone()}

    def _load_state(self, state: dict[str, Any]) -> None:
        rho = state["rho"]
        self.rho = None if rho is None else torch.as_tensor(rho, dtype=torch.float32).clone()

    def to(self, device: torch.device | str) -> SORA:
        if self.rho is not None:
            self.rho = self.rho.to(device)
        return self
