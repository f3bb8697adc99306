"""Catastrophic-overfitting monitor: a cheap PGD check on one fixed batch after every epoch.

CO shows as PGD accuracy collapsing while clean accuracy keeps rising. The monitor flags an epoch when the batch's
PGD accuracy falls more than ``drop`` (absolute) below the best seen so far, or below ``floor`` once it was above it.
Actions (`--on-co`): "log" (record only), "stop" (end training), "rollback" (the ZeroGrad paper's §6.2 procedure:
restore the last good checkpoint, make the method less prone to CO — q + q_step for ZeroGrad, α × alpha_factor for
FGSM-style methods, λ / alpha_factor for GradAlign, smaller step bounds for ATAS and APART (`Method.strengthen`) —
and continue).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


from torch import Tensor, nn

CO_ACTIONS = ("log", "stop", "rollback")

__all__ = ["CO_ACTIONS", "COMonitor", "strengthen"]


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

    def check(self, model: nn.Module, precision: str = "fp32", *, distributed: bool | None = None
              ) -> tuple[float, bool]:
        """(PGD accuracy on the fixed batch, whether it signals catastrophic overfitting). ``distributed`` as in
        `fastat.eval.pgd_robustness` (the trainer passes whether it trains under torchrun)."""
        from ..eval import pgd_robustness

        res = pgd_robustness(model, self.x, self.y, self.eps, self.eps / 4, steps=self.steps, restarts=1,
                             precision="bf16" if precision == "bf16" else "fp32", seed=1, distributed=distributed)
        acc = float(res.robust_acc)
        co = self.best >= 0 and (acc < self.best - self.drop or (acc < self.floor <= self.best))
        self.history.append(acc)
        if not co:
            self.best = max(self.best, acc)
        return acc, co

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.history = float(state["best"]), list(state["history"])


def strengthen(method: Any, *, q_step: float = 0.1, alpha_factor: float = 0.8) -> str:
    """Make ``method`` less prone to CO after a roll-back (`Method.strengthen`: each method turns its own knob);
    returns what changed, for the log."""
    change = method.strengthen(q_step=q_step, alpha_factor=alpha_factor)
    return change or "no hyper-parameter to change"


