"""Catastrophic-overfitting monitors: a cheap PGD check after every epoch.

CO shows as PGD accuracy collapsing while clean accuracy stays high (it usually keeps rising). Two checks
(`--co-check`):

* `COMonitor` ("test", the default): PGD on one fixed batch of test images in eval mode; flags an epoch when its PGD
  accuracy falls more than ``drop`` (absolute) below the best seen so far, or below ``floor`` once it was above it.
  After a roll-back the reference is the restored epoch's own accuracy (`COMonitor.after_rollback`).
* `WongCODetector` ("wong"): WONG's ``--early-stop`` check (`train_fgsm.py:130-140`, methods.md §1, §10): PGD on the
  first training batch of the epoch with the model left in train mode; flags a drop of more than ``drop`` from the
  previous epoch. Usable on its own in any training loop.
* `PertAlignDetector` ("pertalign"): SORA's PertAlign (Teymourian et al., ICML 2026), no attack at all: the cosine
  between the attack's input gradient and the training loss's input gradient, which every step computes anyway,
  averaged over the epoch; flags a fall below ``ratio`` (0.5) × its best epoch.

Both flag a PGD collapse as CO only while the clean accuracy on the same images keeps at least half of its best gain
over chance (`clean_held`): a model whose clean accuracy falls with its robust accuracy is unstable or dying, not
overfitting to its attack, and making the attack weaker (the roll-back's remedy) treats the wrong disease. A model at
chance, or with a non-finite loss or weights, is diverged (`divergence`): the trainer stops it and names the flags
that usually fix it instead of rolling back.

Actions (`--on-co`): "log" (record only), "stop" (end training), "rollback" (the ZeroGrad paper's §6.2 procedure:
restore the last good checkpoint, make the method less prone to CO — q + q_step for ZeroGrad, α × alpha_factor for
FGSM-style methods, λ / alpha_factor for GradAlign, smaller step bounds for ATAS and APART (`Method.strengthen`) —
and continue: `co_response`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import EVAL_ALPHA_OVER_EPS

CO_ACTIONS = ("log", "stop", "rollback")
DIVERGE_ACTIONS = ("stop", "log")
CHANCE_MARGIN = 0.02  # accuracy within this of the best constant predictor's counts as chance level

__all__ = ["CHANCE_MARGIN", "CO_ACTIONS", "CO_CHECKS", "COMonitor", "DIVERGE_ACTIONS", "PertAlignDetector",
           "WongCODetector", "chance_level", "clean_held", "divergence", "make_monitor", "relative_fall"]


def chance_level(y: Tensor) -> float:
    """The accuracy of the best constant predictor on labels ``y``: the largest class's share (0.1 on a balanced
    10-class slice; a dead model that predicts one class scores at most this)."""
    y = y.detach().reshape(-1)
    return float(torch.bincount(y.cpu()).max()) / y.numel() if y.numel() else 0.0


def clean_held(clean: float, best_clean: float, chance: float) -> bool:
    """Whether clean accuracy ``clean`` is still near its best: it keeps at least half of the best gain over chance
    (``clean >= chance + (best_clean - chance) / 2``) and is above chance level. CO needs this; a PGD drop with the
    clean accuracy falling too is instability, not CO."""
    return clean > chance + CHANCE_MARGIN and clean >= chance + 0.5 * (max(best_clean, clean) - chance)


def divergence(clean_acc: float, chance: float, train_loss: float, model: nn.Module | bool) -> str | None:
    """Why a model counts as dead or diverged after an epoch, or None: non-finite weights (``model``: the model, or
    whether its weights are finite), a non-finite training loss, or clean accuracy at chance level (within
    `CHANCE_MARGIN` of the best constant predictor, ``chance``)."""
    if isinstance(model, nn.Module):
        params = [p.detach() for p in model.parameters()]
        model = bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True
    if not model:
        return "non-finite weights"
    if not math.isfinite(train_loss):
        return f"non-finite training loss ({train_loss})"
    if clean_acc <= chance + CHANCE_MARGIN:
        return (f"clean accuracy {100 * clean_acc:.1f}% is at chance level (a constant prediction scores "
                f"{100 * chance:.1f}%)")
    return None


@dataclass
class COMonitor:
    x: Tensor
    y: Tensor
    eps: float
    steps: int = 10
    drop: float = 0.2
    floor: float = 0.05
    best: float = -1.0
    history: list[float] = field(default_factory=list)
    best_clean: float = 0.0
    clean_history: list[float] = field(default_factory=list)
    needs_first_batch: ClassVar[bool] = False
    needs_train_grad: ClassVar[bool] = False
    metric: ClassVar[str] = "co_pgd_acc"  # the metrics row's name for the check's number
    label: ClassVar[str] = "check PGD acc"  # what the CO messages call it (`co_response.check_text`)

    @classmethod
    def from_config(cls, cfg: Any, x_eval: Tensor, y_eval: Tensor) -> COMonitor:
        """The first ``co_batch`` images of the trainer's evaluation slice, PGD-``co_steps``."""
        n = min(cfg.co_batch, x_eval.shape[0])
        return cls(x_eval[:n], y_eval[:n], cfg.eps, steps=cfg.co_steps, drop=cfg.co_drop)

    def after_epoch(self, model: nn.Module, precision: str, first_batch: Any, distributed: bool) -> tuple[float, bool]:
        """The trainer's call after each epoch: `check` (``first_batch`` unused)."""
        return self.check(model, precision, distributed=distributed)

    def check(self, model: nn.Module, precision: str = "fp32", *, distributed: bool | None = None
              ) -> tuple[float, bool]:
        """(PGD accuracy on the fixed batch, whether it signals catastrophic overfitting: a PGD drop while the
        clean accuracy on the batch is `clean_held`). ``distributed`` as in `fastat.eval.pgd_robustness` (the
        trainer passes whether it trains under torchrun)."""
        from ..eval import pgd_robustness

        res = pgd_robustness(model, self.x, self.y, self.eps, EVAL_ALPHA_OVER_EPS * self.eps, steps=self.steps,
                             restarts=1, precision="bf16" if precision == "bf16" else "fp32", seed=1,
                             distributed=distributed)
        acc, clean = float(res.robust_acc), float(res.clean_acc)
        dropped = self.best >= 0 and (acc < self.best - self.drop or (acc < self.floor <= self.best))
        co = dropped and clean_held(clean, self.best_clean, chance_level(self.y))
        self.history.append(acc)
        self.clean_history.append(clean)
        self.best_clean = max(self.best_clean, clean)
        if not co:
            self.best = max(self.best, acc)
        return acc, co

    def after_rollback(self) -> None:
        """The trainer's call once it has restored the last good epoch (and this monitor's state with it): from now
        on a drop is measured from that epoch's own PGD accuracy, not from the best before it. The roll-back judged
        that epoch good; measured against an earlier, higher peak, the retrained epoch was flagged again whatever
        the strengthened method did — in the CPU atlas (ε = 0.25, `co_drop` 0.1) every ZeroGrad seed peaked at
        epoch 2, sat 10 points lower from epoch 5 on, and rolled the same epoch back until q reached 1 and the run
        stopped (3 seeds, stopped at epochs 5, 8 and 7 of 10)."""
        if self.history:
            self.best = self.history[-1]

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "history": list(self.history), "best_clean": self.best_clean,
                "clean_history": list(self.clean_history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.history = float(state["best"]), list(state["history"])
        self.best_clean = float(state.get("best_clean", 0.0))  # (checkpoints before 2026-12-07 lack it)
        self.clean_history = list(state.get("clean_history", []))


@dataclass
class WongCODetector:
    """WONG's catastrophic-overfitting check (``--early-stop`` of locuslab/fast_adversarial): after each epoch, PGD-
    ``steps`` (α = ``alpha``, default ε/4, i.e. WONG's 2/255 at 8/255; one random start, box-clipped; early stop: only
    samples still classified correctly take a step) on the epoch's first training batch, the model left in
    ``bn_mode`` "train" as WONG does (BatchNorm uses the batch's statistics and updates its running ones); CO when
    the robust accuracy falls more than ``drop`` below the previous epoch's (WONG then stops and keeps the previous
    epoch's weights: fastat's ``last_good.pt``). WONG runs 5 steps (``--co-steps 5``).

    In your own loop::

        detector = WongCODetector(eps=8 / 255)
        for epoch in range(epochs):
            for i, (x, y) in enumerate(loader):
                first = (x, y) if i == 0 else first
                ...
            acc, co = detector.check(model, *first)
    """

    eps: float
    alpha: float | None = None
    steps: int = 5
    drop: float = 0.2
    bn_mode: str = "train"
    previous: float = 0.0
    history: list[float] = field(default_factory=list)
    best_clean: float = 0.0
    clean_history: list[float] = field(default_factory=list)
    needs_first_batch: ClassVar[bool] = True
    needs_train_grad: ClassVar[bool] = False
    metric: ClassVar[str] = "co_pgd_acc"
    label: ClassVar[str] = "check PGD acc"

    @classmethod
    def from_config(cls, cfg: Any, x_eval: Tensor, y_eval: Tensor) -> WongCODetector:
        """PGD-``co_steps`` on the epoch's first training batch (the trainer keeps it: `needs_first_batch`)."""
        return cls(cfg.eps, steps=cfg.co_steps, drop=cfg.co_drop)

    def after_epoch(self, model: nn.Module, precision: str, first_batch: Any, distributed: bool) -> tuple[float, bool]:
        """The trainer's call after each epoch: `check` on the epoch's first training batch."""
        return self.check(model, *first_batch, precision, distributed=distributed)

    def check(self, model: nn.Module, x: Tensor, y: Tensor, precision: str = "fp32", *,
              distributed: bool | None = None) -> tuple[float, bool]:
        """(robust accuracy on (x, y), whether it signals catastrophic overfitting: the drop, while the clean
        accuracy on (x, y) is `clean_held`). ``distributed``: sum the counts over the process group (each rank
        checks its own share of the batch)."""
        from .. import distributed as dist_
        from .. import ops
        from ..eval import autocast
        from ..methods.base import attack_mode, frozen_parameters

        alpha = EVAL_ALPHA_OVER_EPS * self.eps if self.alpha is None else self.alpha
        x, y = x.detach().float(), y.detach()
        cast = autocast(x.device, precision)
        with attack_mode(model, self.bn_mode), frozen_parameters(model):
            delta = ops.uniform_init(x, self.eps)
            for _ in range(self.steps):
                x_in = (x + delta).requires_grad_(True)
                with torch.enable_grad(), cast:
                    logits = model(x_in)
                active = logits.argmax(1) == y
                if not bool(active.any()):
                    break
                grad, = torch.autograd.grad(F.cross_entropy(logits.float(), y), x_in)
                delta = ops.pgd_step(delta, grad, x, self.eps, alpha, active)
            with torch.no_grad(), cast:
                correct = (model(x + delta).argmax(1) == y).sum().float()
        with attack_mode(model, "eval"), torch.no_grad(), cast:  # eval: WONG's check moves BN statistics, this not
            clean = (model(x).argmax(1) == y).sum().float()
        counts = torch.stack([correct, clean, torch.tensor(float(y.shape[0]), device=correct.device)])
        if distributed or (distributed is None and dist_.current().enabled):
            counts = dist_.all_reduce_sum(counts)
        acc, clean_acc = (float(c / counts[2].clamp(min=1)) for c in counts[:2])
        co = acc - self.previous < -self.drop and clean_held(clean_acc, self.best_clean, chance_level(y))
        self.history.append(acc)
        self.clean_history.append(clean_acc)
        self.previous = acc
        self.best_clean = max(self.best_clean, clean_acc)
        return acc, co

    def after_rollback(self) -> None:
        """The trainer's call after a roll-back: nothing to change (the reference, the previous epoch's accuracy, is
        the restored epoch's already)."""

    def state_dict(self) -> dict[str, Any]:
        return {"previous": self.previous, "history": list(self.history), "best_clean": self.best_clean,
                "clean_history": list(self.clean_history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous, self.history = float(state["previous"]), list(state["history"])
        self.best_clean = float(state.get("best_clean", 0.0))  # (checkpoints before 2026-12-07 lack it)
        self.clean_history = list(state.get("clean_history", []))


@dataclass
class PertAlignDetector:
    """SORA's PertAlign as a CO check (``--co-check pertalign``): after each step the trainer hands over the
    attack's input gradient g₁ (at the attack's start point: `Method.attack_grad`) and the training loss's input
    gradient g₂ (at x_adv, from the training backward, which computes it for the cost of one more input gradient
    through the first layer); `observe` adds mean_i cos(g₁ᵢ, g₂ᵢ) (`gradient_alignment`: samples with a zero
    gradient left out) to device sums, with no host sync. After the epoch the check reads the epoch's mean: CO when
    it falls below ``ratio`` × the best epoch's (after a roll-back: the restored epoch's; `relative_fall`).

    Why a ratio and not an absolute fall as the PGD checks use: the cosine's level depends on the method (0.3 for
    FGSM-RS, 0.7–0.9 for ATAS on the CPU atlas), so a fixed fall misses a collapse that starts low and flags a
    method that merely drifts down from high. On the atlas's 15 runs (docs/results/pertalign.md) a fall of 0.2
    missed one of three FGSM collapses and flagged 4 of 11 runs that did not collapse; half the best flagged the
    three collapses (0, 1 epoch before or 1 after the PGD check), the ε = 0.2 FGSM run whose PGD accuracy slid from
    38 to 22 % (which the PGD check never flagged), and 1 of the 11 others (N-FGSM, in its last epoch). The ratio
    was read off the 7 runs at ε = 0.25 and then held on the 8 at ε = 0.1 and 0.2.

    The reasoning (the SORA paper): while the loss is close to linear inside the ε-ball both gradients point the same
    way; catastrophic overfitting makes the loss surface curve sharply there, and the gradient at the attack's
    start stops predicting the one at the adversarial point. Needs a method that keeps its attack gradient
    (`Method.keeps_attack_grad`: the single-step methods).
    """

    ratio: float = 0.5
    best: float = -math.inf
    history: list[float] = field(default_factory=list)
    _sum: Tensor | None = None
    _count: Tensor | None = None
    needs_first_batch: ClassVar[bool] = False
    needs_train_grad: ClassVar[bool] = True
    metric: ClassVar[str] = "pertalign"
    label: ClassVar[str] = "PertAlign"

    @classmethod
    def from_config(cls, cfg: Any, x_eval: Tensor, y_eval: Tensor) -> PertAlignDetector:
        """``pertalign_ratio`` as the fraction of the best epoch's mean cosine below which an epoch is CO."""
        return cls(ratio=cfg.pertalign_ratio)

    def observe(self, attack_grad: Tensor, train_grad: Tensor) -> None:
        """Add this step's mean cosine (a step whose gradients are all zero adds nothing)."""
        from ..methods.gradalign import gradient_alignment

        cos = gradient_alignment(attack_grad, train_grad)
        valid = ~torch.isnan(cos)
        if self._sum is None or self._sum.device != cos.device:
            self._sum = torch.zeros((), device=cos.device)
            self._count = torch.zeros((), device=cos.device)
        self._sum += torch.where(valid, cos, 0.0)
        self._count += valid.float()

    def after_epoch(self, model: nn.Module, precision: str, first_batch: Any, distributed: bool) -> tuple[float, bool]:
        """(the epoch's mean PertAlign, whether it signals CO); the sums start over. Under torchrun the ranks' sums
        are added first, so every rank decides alike."""
        from .. import distributed as dist_

        if self._sum is None:
            value = math.nan
        else:
            sums = torch.stack([self._sum, self._count])
            if distributed:
                sums = dist_.all_reduce_sum(sums)
            value = float(sums[0] / sums[1]) if float(sums[1]) > 0 else math.nan
            self._sum.zero_()
            self._count.zero_()
        co = relative_fall(value, self.best, self.ratio)
        self.history.append(value)
        if not co and math.isfinite(value):
            self.best = max(self.best, value)
        return value, co

    def after_rollback(self) -> None:
        """As `COMonitor.after_rollback`: later falls are measured from the restored epoch's value."""
        if self.history and math.isfinite(self.history[-1]):
            self.best = self.history[-1]

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.history = float(state["best"]), list(state["history"])


def relative_fall(value: float, best: float, ratio: float) -> bool:
    """PertAlign's CO rule: ``value`` below ``ratio`` × ``best`` (a positive best; NaN or no best yet: no)."""
    return math.isfinite(value) and math.isfinite(best) and best > 0 and value < ratio * best


# `--co-check` NAME -> detector class (each with `from_config`, `after_epoch`, `after_rollback`, `needs_first_batch`,
# `needs_train_grad`, `metric`, `label`, state_dict); a new CO detector is one class here and its entry in this table
CO_CHECKS: dict[str, Any] = {"test": COMonitor, "wong": WongCODetector, "pertalign": PertAlignDetector}


def make_monitor(cfg: Any, x_eval: Tensor, y_eval: Tensor) -> COMonitor | WongCODetector | PertAlignDetector:
    """The CO detector ``cfg.co_check`` names, built from the config and the trainer's evaluation slice."""
    return CO_CHECKS[cfg.co_check].from_config(cfg, x_eval, y_eval)
