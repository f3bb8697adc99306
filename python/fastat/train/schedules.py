"""Learning-rate schedules as step-indexed multipliers of ``lr_max`` (wrapped in a `LambdaLR`, stepped per batch).

* cyclic: 0 → 1 linearly until ``peak`` × total steps, then → 0 at the end, evaluated at t = step + 1 (the rule of
  the ZeroGrad and GradAlign codes, lr(epoch + (i+1)/n)); ``peak`` 0.5 is WONG's, N-FGSM's, APART's and ZeroGrad's
  (WONG's CyclicLR is one step behind: its first step runs with lr 0), 0.4 GradAlign's. Momentum stays fixed, unlike
  torch's CyclicLR which cycles it (methods.md §0.4).
* piecewise: 1 until 50 % of the run, 0.1 until 75 %, 0.01 after (Rice et al.).
* multistep: multiplied by ``gamma`` at each fraction in ``milestones``.
* constant: 1.

`StepSchedule` applies a factor per batch to float or tensor learning rates (the latter for CUDA-graph training).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import torch

SCHEDULES = ("cyclic", "piecewise", "multistep", "constant")

__all__ = ["SCHEDULES", "StepSchedule", "lr_factor", "make_scheduler"]


def lr_factor(schedule: str, total_steps: int, *, peak: float = 0.5, milestones: Sequence[float] = (0.5, 0.75),
              gamma: float = 0.1) -> Callable[[int], float]:
    """The multiplier of lr_max after ``step`` optimiser steps (step 0 is the first batch)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"lr schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    total = max(int(total_steps), 1)
    if schedule == "cyclic":
        if not 0.0 < peak < 1.0:
            raise ValueError(f"argument 'peak' must be in (0, 1), got {peak!r}")
        up = peak * total

        def cyclic(step: int) -> float:
            t = step + 1  # the lr used by batch `step` is the value at the end of it (ZeroGrad's/GradAlign's rule)
            return t / up if t <= up else max(0.0, (total - t) / (total - up))
        return cyclic
    if schedule == "piecewise":
        milestones, gamma = (0.5, 0.75), 0.1
    if schedule == "constant":
        return lambda step: 1.0
    bounds = sorted(float(m) * total for m in milestones)
    return lambda step: gamma ** bisect.bisect_right(bounds, step)


class StepSchedule:
    """lr of every param group = its initial lr × ``factor(step)``, stepped once per batch (what `LambdaLR` does).

    A tensor lr (CUDA-graph training: the captured optimizer step reads it) is updated in place with ``fill_`` from a
    host float, so stepping never syncs and the captured graph sees each new value; a float lr is replaced.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[int], float]) -> None:
        self.optimizer = optimizer
        self.factor = factor
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.last_epoch = 0  # steps taken (LambdaLR's name, kept for familiarity)
        self._apply()

    def _apply(self) -> None:
        f = self.factor(self.last_epoch)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(base * f)
            else:
                group["lr"] = base * f

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch = int(state["last_epoch"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        self._apply()


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, **kw) -> StepSchedule:
    """A per-batch `StepSchedule` over ``optimizer`` (whose lr is lr_max) following `lr_factor`."""
    return StepSchedule(optimizer, lr_factor(schedule, total_steps, **kw))
