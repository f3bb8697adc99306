"""NuAT: a Bernoulli start, one step, and the nuclear-norm regulariser on the clean-vs-adversarial logits (Sriramanan
et al., NeurIPS 2021), as the FastAT Benchmark runs it (fzjcdt/FastAT_Benchmark `fast_at/nu_at.py`,
`configs/cifar10/nu_at.yaml`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..batch import BatchInfo
from .base import Method, check_int, check_positive, fail, leaf, to_unit_box

__all__ = ["NuAT", "nuclear_gap"]


def nuclear_gap(clean_logits: Tensor, adv_logits: Tensor) -> Tensor:
    """‖f(x) − f(x_adv)‖_* / B: the nuclear norm (sum of singular values) of the (B, K) logits difference, per sample
    (`nu_at.py:83,91`), in fp32."""
    diff = clean_logits.float() - adv_logits.float()
    return torch.linalg.matrix_norm(diff, ord="nuc") / diff.shape[0]


class NuAT(Method):
    """NuAT: x₀ = Π_box(x + (ε/2)·s), s = ±1 with equal odds; δ = Π_box(Π_ε(x₀ − x + α·sign(∇ L_atk)); x), α = ε,
    and the training loss CE(f(x), y) + λ_e·‖f(x) − f(x + δ)‖_* / B — clean cross-entropy plus the regulariser, not
    the adversarial cross-entropy.

    * The attack loss L_atk is CE_mean(f(x₀), y), plus λ_e·‖f(x) − f(x₀)‖_* / B on every second batch of an epoch
      (the benchmark's ``counter % 2 == 1``, the alternating step).
    * λ_e ramps linearly per epoch: λ_e = ``nuc_max``·(e − 1)/E for epoch e of E (`nu_at.py:119`: starts at 0,
      raised by nuc_max / E after each epoch).

    Defaults (`configs/cifar10/nu_at.yaml`, `nu_at.py:15`): ``nuc_max`` 4, α = ε. The benchmark's recipe adds label
    smoothing 0.4 and a per-step weight average with τ = 0.9995 (fastat: ``--label-smoothing 0.4 --ema 0.9995``, "the
    FAB recipe"). BN: train mode during the attack (the benchmark leaves the model in train mode). Deviations: the
    attack builds no weight gradients (the benchmark calls ``loss.backward()`` and discards them); the clean forward
    the attack's regulariser needs is taken without gradients and only on the batches that use it (the benchmark
    takes it on every batch, with gradients, so BatchNorm's running statistics also see the clean batch there).
    ``epochs`` is the run's length (the trainer passes it).
    """

    name = "nuat"
    keeps_attack_grad = True
    alpha: float
    nuc_max: float
    epochs: int

    def __init__(self, *, eps: float, alpha: float | None = None, nuc_max: float = 4.0, epochs: int = 30,
                 attack_bn_mode: str | None = None) -> None:
        eps = check_positive("NuAT", "eps", eps)
        super().__init__(eps=eps, attack_bn_mode=attack_bn_mode, alpha=eps if alpha is None else alpha,
                         nuc_max=nuc_max, epochs=epochs)
        self.epoch = 1
        self.batch_in_epoch = 0

    def check_hparams(self, hp: dict) -> dict:
        nuc = hp["nuc_max"]
        if isinstance(nuc, bool) or not isinstance(nuc, (int, float)) or not nuc >= 0:
            fail("NuAT", ValueError, f"argument 'nuc_max' must be a number >= 0, got {nuc!r}")
        return {**hp, "alpha": check_positive("NuAT", "alpha", hp["alpha"]), "nuc_max": float(nuc),
                "epochs": check_int("NuAT", "epochs", hp["epochs"], 1)}

    @property
    def nuc_weight(self) -> float:
        """λ_e of the current epoch: nuc_max·(e − 1)/E."""
        return self.nuc_max * (self.epoch - 1) / self.epochs

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch, self.batch_in_epoch = int(epoch), 0

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, batch: BatchInfo | None = None) -> Tensor:
        self._check_inputs(x, y)
        xf = x.detach().float()
        signs = torch.rand(xf.shape, dtype=torch.float32, device=xf.device, generator=self.generator) < 0.5
        start = torch.where(signs, 0.5 * self.eps, -0.5 * self.eps)
        delta0 = torch.clamp(xf + start, 0, 1) - xf
        regularised = self.batch_in_epoch % 2 == 1 and self.nuc_weight > 0
        self.batch_in_epoch += 1
        with self.attacking(model):
            x0 = leaf(xf + delta0)
            logits = model(x0)
            loss = F.cross_entropy(logits.float(), y)
            if regularised:
                with torch.no_grad():
                    clean = model(xf)
                loss = loss + self.nuc_weight * nuclear_gap(clean, logits)
            (grad,) = torch.autograd.grad(loss, x0)
        self.attack_grad = grad
        delta = ops.pgd_step(delta0, grad, xf, self.eps, self.alpha)
        return to_unit_box(xf, delta).to(x.dtype)

    def train_loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor,
                   label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
        """CE(f(x), y) + λ_e·‖f(x) − f(x_adv)‖_* / B, the adversarial forward first as in `nu_at.py:88-91`; the
        adversarial logits are returned for the training accuracy."""
        adv = model(x_adv)
        clean = model(x)
        loss = F.cross_entropy(clean.float(), y, label_smoothing=label_smoothing)
        if self.nuc_weight > 0:
            loss = loss + self.nuc_weight * nuclear_gap(clean, adv)
        return loss, adv

    def stats(self) -> dict[str, Tensor]:
        return {"nuc_weight": torch.tensor(self.nuc_weight)}
