"""Learning-rate schedules as step-indexed multipliers of ``lr_max`` (wrapped in a `LambdaLR`, stepped per batch).

* cyclic: 0 → 1 linearly until ``peak`` × total steps, then → 0 at the end (WONG's one-cycle; momentum stays fixed,
  unlike torch's CyclicLR which cycles it).
* piecewise: 1 until 50 % of the run, 0.1 until 75 %, 0.01 after (Rice et al.).
* multistep: multiplied by ``gamma`` at each fraction in ``milestones``.
* constant: 1.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import torch

SCHEDULES = ("cyclic", "piecewise", "multistep", "constant")

__all__ = ["SCHEDULES", "lr_factor", "make_scheduler"]


def lr_factor(schedule: str, total_steps: int, *, peak: float = 0.4, milestones: Sequence[float] = (0.5, 0.75),
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
            t = step + 1  # the lr used by batch `step` is the value at the end of it, as WONG's per-batch update
            return t / up if t <= up else max(0.0, (total - t) / (total - up))
        return cyclic
    if schedule == "piecewise":
        milestones, gamma = (0.5, 0.75), 0.1
    if schedule == "constant":
        return lambda step: 1.0
    bounds = sorted(float(m) * total for m in milestones)
    return lambda step: gamma ** bisect.bisect_right(bounds, step)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int,
                   **kw) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` over ``optimizer`` (whose lr is lr_max) following `lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(schedule, total_steps, **kw))
