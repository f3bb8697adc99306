"""Single-step attacks: FGSM (zero init), FGSM-RS (WONG) and N-FGSM (NF).

All three take one input gradient at a start point δ₀ and step α·sign(g) from it (methods.md §1, §5):
FGSM δ₀ = 0; FGSM-RS δ₀ = Π_box(U(−ε, ε)); N-FGSM δ₀ = Π_box(U(−kε, kε)) and no ε-clip afterwards.
"""

from __future__ import annotations

from torch import Tensor, nn

from .. import ops
from ..batch import BatchInfo
from .base import Method, check_positive, input_grad, leaf, to_unit_box

__all__ = ["FGSM", "FGSMRS", "NFGSM"]


def _one_step(method: Method, model: nn.Module, x: Tensor, y: Tensor, delta0: Tensor, eps: float,
              alpha: float) -> Tensor:
    """x_adv = clip(x + Π_box(Π_ε(δ₀ + α·sign(∇_δ CE(f(x + δ₀), y))); x), 0, 1) — one `pgd_step`."""
    xf = x.detach().float()
    with method.attacking(model):
        grad = input_grad(model, leaf(xf + delta0), y)
    method.attack_grad = grad
    delta = ops.pgd_step(delta0, grad, xf, eps, alpha)
    return to_unit_box(xf, delta).to(x.dtype)


class FGSM(Method):
    """FGSM from zero: δ = Π_box(Π_ε(α·sign(∇_x CE(f(x), y))); x), i.e. ε·sign(g) for any α ≥ ε.

    Defaults: α = ε (Goodfellow et al.; also GA's "no random step and alpha := eps", GA issue #7). WONG's
    ``--delta-init zero`` and GA's ``--attack_init=zero`` use α = 1.25ε, which gives the same δ after Π_ε.
    BN: train mode during the attack (WONG, GA).
    """

    name = "fgsm"
    step_from_zero = True
    keeps_attack_grad = True
    alpha: float

    def __init__(self, *, eps: float, alpha: float | None = None, attack_bn_mode: str | None = None) -> None:
        eps = check_positive("FGSM", "eps", eps)
        super().__init__(eps=eps, attack_bn_mode=attack_bn_mode, alpha=eps if alpha is None else alpha)

    def check_hparams(self, hp: dict) -> dict:
        return {**hp, "alpha": check_positive("FGSM", "alpha", hp["alpha"])}

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, batch: BatchInfo | None = None) -> Tensor:
        self._check_inputs(x, y)
        zero = x.detach().float().new_zeros(x.shape)
        return _one_step(self, model, x, y, zero, self.eps, self.alpha)


class FGSMRS(Method):
    """FGSM-RS (WONG `train_fgsm.py:101-129`): δ₀ = Π_box(U(−ε, ε); x), δ = Π_box(Π_ε(δ₀ + α·sign(g)); x).

    Defaults: α = 1.25ε (10/255 at ε = 8/255). BN: train mode during the attack (`train_fgsm.py:73,112`).
    Deviation: the attack backward builds no weight gradients (WONG calls ``loss.backward()`` and discards them).
    """

    name = "fgsm_rs"
    keeps_attack_grad = True
    alpha: float

    def __init__(self, *, eps: float, alpha: float | None = None, attack_bn_mode: str | None = None) -> None:
        eps = check_positive("FGSMRS", "eps", eps)
        super().__init__(eps=eps, attack_bn_mode=attack_bn_mode, alpha=1.25 * eps if alpha is None else alpha)

    def check_hparams(self, hp: dict) -> dict:
        return {**hp, "alpha": check_positive("FGSMRS", "alpha", hp["alpha"])}

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, batch: BatchInfo | None = None) -> Tensor:
        self._check_inputs(x, y)
        delta0 = ops.uniform_init(x.detach().float(), self.eps, generator=self.generator)
        return _one_step(self, model, x, y, delta0, self.eps, self.alpha)


class NFGSM(Method):
    """N-FGSM (NF `train.py:216-243`): η = Π_box(U(−kε, kε); x), δ = Π_box(η + α·sign(∇_η CE(f(x+η), y)); x).

    There is no Π_ε, so ‖δ‖∞ ≤ (k+1)ε = 3ε by default. Defaults: k (``noise_scale``) = 2, α = ε, ``clip`` None (the
    official ``--clip -1``); ``clip=c`` adds the official extra clip to ±c·ε (box-then-clip and clip-then-box give
    the same result, so one `pgd_step` with ε' = c·ε does both). BN: train mode during the attack (`train.py:173`).
    Deviation: none beyond the shared ones (pixel-space ε instead of per-channel normalised units).
    """

    name = "n_fgsm"
    keeps_attack_grad = True
    alpha: float
    noise_scale: float
    clip: float | None

    def __init__(self, *, eps: float, alpha: float | None = None, noise_scale: float = 2.0, clip: float | None = None,
                 attack_bn_mode: str | None = None) -> None:
        eps = check_positive("NFGSM", "eps", eps)
        super().__init__(eps=eps, attack_bn_mode=attack_bn_mode, alpha=eps if alpha is None else alpha,
                         noise_scale=noise_scale, clip=clip)

    def check_hparams(self, hp: dict) -> dict:
        return {**hp, "alpha": check_positive("NFGSM", "alpha", hp["alpha"]),
                "noise_scale": check_positive("NFGSM", "noise_scale", hp["noise_scale"]),
                "clip": None if hp["clip"] is None else check_positive("NFGSM", "clip", hp["clip"])}

    @property
    def radius(self) -> float:
        """The ℓ∞ radius x_adv can reach: (k·ε + α), or c·ε with ``clip``."""
        reach = self.noise_scale * self.eps + self.alpha
        return reach if self.clip is None else min(reach, self.clip * self.eps)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, batch: BatchInfo | None = None) -> Tensor:
        self._check_inputs(x, y)
        eta = ops.uniform_init(x.detach().float(), self.noise_scale * self.eps, generator=self.generator)
        # Without `clip` the ε-clamp of pgd_step must be a no-op: |η + α·sign(g)| ≤ kε + α < 2(kε + α).
        bound = 2 * (self.noise_scale * self.eps + self.alpha) if self.clip is None else self.clip * self.eps
        return _one_step(self, model, x, y, eta, bound, self.alpha)
