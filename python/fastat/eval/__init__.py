"""fastat.eval: robustness evaluation.

- `pgd_robustness`: PGD-k-r with the official max-loss restart accounting and the "any restart" accounting, batched
  (restarts side by side, early-stopped runs compacted away) with results identical to the plain loop (`pgd`).
- `run_autoattack`: standard AutoAttack through PyPI's pyautoattack (`autoattack`).
- `diagnostics`: gradient alignment, FGSM-vs-PGD loss gap, sign changes between checkpoints, loss-surface PNGs.
- `cli`: the ``fastat eval`` subcommand (also ``python -m fastat.eval``).
"""

from __future__ import annotations

from ._common import autocast
from .autoattack import AutoAttackResult, autoattack_available, run_autoattack
from .diagnostics import LossSurface, fgsm_pgd_loss_gap, gradient_alignment, loss_surface, sign_change_fraction
from .pgd import ACCOUNTINGS, IMPLS, PGDResult, aggregate_restarts, pgd_robustness

__all__ = [
    "ACCOUNTINGS",
    "autocast",
    "IMPLS",
    "AutoAttackResult",
    "LossSurface",
    "PGDResult",
    "aggregate_restarts",
    "autoattack_available",
    "fgsm_pgd_loss_gap",
    "gradient_alignment",
    "loss_surface",
    "pgd_robustness",
    "run_autoattack",
    "sign_change_fraction",
]
