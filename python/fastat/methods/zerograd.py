"""ZeroGrad and MultiGrad (ZG, rohban-lab/catastrophic_overfitting `train_cifar.py:55-103`, methods.md §2-3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..batch import BatchInfo
from .base import Method, StrengthenLimit, check_int, check_positive, check_range, fail, input_grad, leaf, to_unit_box

__all__ = ["ZeroGrad", "MultiGrad"]


class ZeroGrad(Method):
    """ZeroGrad: δ₀ = Π_box(U(−ε, ε); x), then ``zero_iters`` times δ ← Π_box(Π_ε(δ + α·sign(g)·[|g| ≥ τ]); x).

    τ_i = torch.quantile(|g_i|, q) per sample over C·H·W (strict <: ties with τ move). Defaults: q = 0.35 (the
    CIFAR-10 value; 0.45 CIFAR-100, 0.7 SVHN), α = 2ε, zero_iters = 1. With α ≥ 2ε every kept coordinate ends at
    ±ε. q = 0 is FGSM-RS with the same α. BN: train mode during the attack (`train_cifar.py:266`).
    Deviation: the attack backward builds no weight gradients (ZG calls ``.backward()``).
    """

    name = "zerograd"
    keeps_attack_grad = True  # (the last iteration's with zero_iters > 1)
    alpha: float
    q: float
    zero_iters: int

    def __init__(self, *, eps: float, alpha: float | None = None, q: float = 0.35, zero_iters: int = 1,
                 attack_bn_mode: str | None = None) -> None:
        eps = check_positive("ZeroGrad", "eps", eps)
        super().__init__(eps=eps, attack_bn_mode=attack_bn_mode, alpha=2 * eps if alpha is None else alpha, q=q,
                         zero_iters=zero_iters)

    def check_hparams(self, hp: dict) -> dict:
        return {**hp, "alpha": check_positive("ZeroGrad", "alpha", hp["alpha"]),
                "q": check_range("ZeroGrad", "q", hp["q"], 0.0, 1.0),
                "zero_iters": check_int("ZeroGrad", "zero_iters", hp["zero_iters"], 1)}

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, batch: BatchInfo | None = None) -> Tensor:
        self._check_inputs(x, y)
        xf = x.detach().float()
        delta = ops.uniform_init(xf, self.eps, generator=self.generator)
        for _ in range(self.zero_iters):
            with self.attacking(model):
                grad = input_grad(model, leaf(xf + delta), y)
            self.attack_grad = grad
            # torch.quantile (inside the op's contract) needs fp32 gradients; bf16 ones are upcast here.
            delta = ops.zerograd_step(delta, grad.float(), xf, self.eps, self.alpha, self.q)
        return to_unit_box(xf, delta).to(x.dtype)

    def strengthen(self, *, q_step: float = 0.1, alpha_factor: float = 0.8) -> str:
        """The ZeroGrad paper's roll-back remedy (§6.2): zero a larger quantile, q + q_step. A q past 1 does not
        exist (at q = 1 every coordinate is zeroed and the attack no longer steps): `StrengthenLimit` says so."""
        old = float(self.q)
        new = round(old + q_step, 6)
        if new > 1.0:
            raise StrengthenLimit(f"ZeroGrad cannot be made more conservative: q {old:g} + q_step {q_step:g} would "
                                  "pass 1 (pass a smaller --q-step, or a larger q from the start)")
        self.set_hparams(q=new)
        return f"q {old:g} -> {self.q:g}"


class MultiGrad(Method):
    """MultiGrad: S starts δ₀⁽ˢ⁾ = Π_box(U(−ε, ε); x), G = Σ_s sign(∇ CE(f(x + δ₀⁽ˢ⁾), y)),
    δ = Π_box(Π_ε(α·sign(G)·[|G| ≥ 2·th − S]); x) — from zero, not from any start.

    Defaults: S (``starts``) = 3, th (``threshold``) = None = S (unanimous: an exact zero in any start rejects the
    coordinate), α = 2ε (so agreed coordinates end at ±ε). BN: train mode during the attack.

    Deviation (on purpose): ``batched=True`` (default) runs the S starts as one forward/backward of S·B inputs,
    which is ZG's ``--multi-parallel`` mode; the official default is sequential (``batched=False``: S passes, and
    BN running statistics get S updates from batches of B). For a model without BatchNorm the two give the same δ;
    with BN in train mode the batch statistics differ (S·B vs B). Both draw the S starts as one (S, B, ...) tensor,
    so they see the same random numbers.
    """

    name = "multigrad"
    step_from_zero = True
    alpha: float
    starts: int
    threshold: int | None
    batched: bool

    def __init__(self, *, eps: float, alpha: float | None = None, starts: int = 3, threshold: int | None = None,
                 batched: bool = True, attack_bn_mode: str | None = None) -> None:
        eps = check_positive("MultiGrad", "eps", eps)
        super().__init__(eps=eps, attack_bn_mode=attack_bn_mode, alpha=2 * eps if alpha is None else alpha,
                         starts=starts, threshold=threshold, batched=batched)

    def check_hparams(self, hp: dict) -> dict:
        starts, threshold = check_int("MultiGrad", "starts", hp["starts"], 1), hp["threshold"]
        if threshold is not None:
            threshold = check_int("MultiGrad", "threshold", threshold, 1)
            if threshold > starts:
                fail("MultiGrad", ValueError, f"argument 'threshold' must be in [1, starts={starts}], got {threshold}")
        if not isinstance(hp["batched"], bool):
            fail("MultiGrad", TypeError, f"argument 'batched' must be a bool, got {type(hp['batched']).__name__}")
        return {**hp, "alpha": check_positive("MultiGrad", "alpha", hp["alpha"]), "starts": starts,
                "threshold": threshold}

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, batch: BatchInfo | None = None) -> Tensor:
        self._check_inputs(x, y)
        xf = x.detach().float()
        s, b = self.starts, x.shape[0]
        starts = ops.uniform_init(xf.unsqueeze(0).expand(s, *xf.shape), self.eps, generator=self.generator)
        with self.attacking(model):
            if self.batched:
                grads = self._batched_grads(model, xf, y, starts)
            else:
                grads = torch.stack([input_grad(model, leaf(xf + starts[i]), y) for i in range(s)])
        delta = ops.multigrad_step(grads.reshape(s, b, *xf.shape[1:]), xf, self.eps, self.alpha, self.threshold)
        return to_unit_box(xf, delta).to(x.dtype)

    @staticmethod
    def _batched_grads(model: nn.Module, xf: Tensor, y: Tensor, starts: Tensor) -> Tensor:
        """All S gradients from one pass; the loss Σ_s CE_mean_s = CE_sum / B gives each start its own batch-mean
        gradient, exactly what the sequential pass computes."""
        s, b = starts.shape[0], xf.shape[0]
        x_in = leaf((xf.unsqueeze(0) + starts).reshape(s * b, *xf.shape[1:]))
        loss = F.cross_entropy(model(x_in).float(), y.repeat(s), reduction="sum") / b
        (grad,) = torch.autograd.grad(loss, x_in)
        return grad
