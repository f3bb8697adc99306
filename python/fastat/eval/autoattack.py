"""AutoAttack through PyPI's `pyautoattack` (the packaged fra31/auto-attack; methods.md §9).

pyautoattack 0.2.0 differs from the git version: arguments after the model are keyword-only, ``device`` defaults to
"cpu" (so fastat always passes it), ``attacks`` replaces ``attacks_to_run``, and ``run_standard_evaluation`` always
returns ``(x_adv, y_adv)``. It does not put the model in eval mode; fastat does (and restores the modes). Inputs must
be in [0, 1] with normalisation inside the model. Only ``version="standard"`` gives numbers comparable with published
AutoAttack results (APGD-CE, APGD-T, FAB-T, Square; 100 iterations); anything else warns.

Distributed (``torchrun``; ``distributed=None`` shards whenever a process group of more than one rank is up): every
rank passes the same full (x, y) and a model with identical weights; rank k attacks the contiguous shard
``fastat.distributed.shard_range(N, k, world)`` with AutoAttack seeded with ``seed`` (the same seed on every rank), and
the per-sample robust flags are gathered in the original order. AutoAttack's per-sample attacks do not interact, so
this is a valid AutoAttack evaluation, but its random draws (APGD starts, Square's proposals) depend on the batch
composition, so the flags are not bit-identical to a single-process run with the same seed. ``seconds`` is the
slowest rank's; ``per_attack`` sums each rank's robust count after each attack.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .. import distributed as fdist
from ._common import check_inputs, check_positive, eval_mode, model_device
from .pgd import check_same_samples, plain_module, resolve_world

VERSIONS = ("standard", "plus", "rand", "custom")
ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
_ACC_LINE = re.compile(r"robust accuracy after ([A-Z0-9-]+): ([0-9.]+)%")

__all__ = ["AutoAttackResult", "run_autoattack", "autoattack_available"]


@dataclass
class AutoAttackResult:
    """Accuracies in [0, 1]; ``robust`` per sample (CPU bool); ``per_attack`` is the robust accuracy after each
    attack of the sequence (as AutoAttack logs it)."""

    clean_acc: float
    robust_acc: float
    robust: Tensor
    per_attack: dict[str, float]
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"clean_acc": self.clean_acc, "robust_acc": self.robust_acc, "per_attack": dict(self.per_attack),
                "n": int(self.robust.numel()), "seconds": self.seconds, **self.settings}


def autoattack_available() -> bool:
    """True when `pyautoattack` can be imported."""
    try:
        import pyautoattack  # noqa: F401
    except ImportError:
        return False
    return True


class _AccuracyLog(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.per_attack: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        m = _ACC_LINE.search(record.getMessage())
        if m:
            self.per_attack[m.group(1).lower()] = float(m.group(2)) / 100.0


def run_autoattack(model: nn.Module, x: Tensor, y: Tensor, eps: float, version: str = "standard",
                   attacks: Sequence[str] | None = None, batch_size: int = 500,
                   device: str | torch.device | None = None, *, norm: str = "Linf", seed: int = 0,
                   n_iter: int | None = None, distributed: bool | None = None) -> AutoAttackResult:
    """Run AutoAttack on (x, y) and return clean and robust accuracy.

    Args:
        model: maps inputs in [0, 1] to logits; run in eval mode.
        x, y: inputs in [0, 1] and int labels (kept where they are; batches are moved to ``device``).
        eps: the ℓ∞ (or ℓ2/ℓ1) budget.
        version: "standard" (the reported setting), "plus", "rand" or "custom" (with ``attacks``).
        attacks: for version="custom", a subset of "apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t".
        batch_size: samples per attack batch (larger is faster; AutoAttack's default is 250).
        device: where to attack (default: the model's device); always passed to pyautoattack.
        norm: "Linf", "L2" or "L1".
        seed: AutoAttack's seed (fixed for reproducibility; the leaderboard used none).
        n_iter: APGD iterations (custom runs only, e.g. a quick test); None keeps 100.
        distributed: shard the samples over the torch.distributed process group (module docstring). None: when a
            group of more than one rank is initialised; False: attack every sample on this rank; True: require one.
    """
    fn = "run_autoattack"
    check_inputs(fn, x, y)
    check_positive(fn, "eps", eps)
    if version not in VERSIONS:
        raise ValueError(f"{fn}: argument 'version' must be one of {VERSIONS}, got {version!r}")
    if (version == "custom") != (attacks is not None):
        raise ValueError(f"{fn}: argument 'attacks' must be given exactly when version='custom'")
    if attacks is not None:
        bad = [a for a in attacks if a not in ATTACKS]
        if bad or not attacks:
            raise ValueError(f"{fn}: argument 'attacks' must be a non-empty subset of {ATTACKS}, got {list(attacks)}")
    if n_iter is not None and version != "custom":
        raise ValueError(f"{fn}: argument 'n_iter' is only allowed with version='custom'")
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise ImportError(f"{fn}: needs the 'pyautoattack' package (pip install pyautoattack; Python >= 3.10)") \
            from None
    if version != "standard":
        warnings.warn(f"AutoAttack version={version!r}{' with n_iter=' + str(n_iter) if n_iter else ''} is not the "
                      f"standard evaluation; its numbers are not comparable with published AutoAttack results",
                      stacklevel=2)
    world = resolve_world(fn, distributed)
    model = plain_module(model)
    dev = torch.device(device) if device is not None else model_device(model)
    y = y.to(torch.int64)
    lo, hi = 0, int(x.shape[0])
    if world.enabled:
        check_same_samples(fn, x, y)
        lo, hi = fdist.shard_range(hi, world.rank, world.world_size)
    x, y = x[lo:hi], y[lo:hi]
    handler = _AccuracyLog()
    logger = logging.getLogger("auto-attack")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with eval_mode(model):
            adversary = AutoAttack(model, norm=norm, eps=float(eps), version=version, seed=seed, device=dev,
                                   attacks=list(attacks) if attacks is not None else None)
            if version == "custom":
                adversary.apgd.n_restarts = 1  # the custom default is 5; use the standard setting
                if n_iter is not None:
                    for attack in (adversary.apgd, adversary.apgd_targeted):
                        _set_apgd_iterations(attack, n_iter)
            clean = _clean_correct(model, x, y, dev, batch_size)
            _sync(dev)
            t0 = time.perf_counter()
            y_adv = y
            if hi > lo:  # an empty shard only joins the gathers below
                _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
            _sync(dev)
            seconds = time.perf_counter() - t0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    robust = (y_adv.to(y.device) == y).cpu() & clean
    order = list(adversary.attacks_to_run)
    per_attack = handler.per_attack
    if world.enabled:
        robust, clean, seconds, per_attack = _gather(robust, clean, seconds, per_attack, order)
    settings = {"eps": float(eps), "version": version, "norm": norm, "seed": seed, "batch_size": batch_size,
                "attacks": order, "world_size": world.world_size}
    if n_iter is not None:
        settings["n_iter"] = n_iter
    return AutoAttackResult(clean_acc=float(clean.float().mean()), robust_acc=float(robust.float().mean()),
                            robust=robust, per_attack=per_attack, seconds=seconds, settings=settings)


def _gather(robust: Tensor, clean: Tensor, seconds: float, per_attack: dict[str, float],
            order: list[str]) -> tuple[Tensor, Tensor, float, dict[str, float]]:
    """Every rank's flags in rank order, the slowest rank's seconds and the pooled robust accuracy after each attack.

    AutoAttack logs each accuracy as a percentage with two decimals, so a rank's count after an attack is recovered
    exactly by rounding for shards of up to 10,000 samples. A rank that logged nothing for an attack had no robust
    sample left (AutoAttack skips the remaining attacks then): its count is 0.
    """
    n = robust.shape[0]
    counts = [float(round(per_attack[a] * n)) if a in per_attack else 0.0 for a in order]
    logged = [float(a in per_attack) for a in order]
    mine = torch.tensor([[seconds, n, *counts, *logged]], dtype=torch.float64)
    every = fdist.all_gather_rows(mine)
    flags = fdist.all_gather_rows(torch.stack([robust, clean], 1))
    total, k = int(every[:, 1].sum()), len(order)
    pooled = {a: float(every[:, 2 + i].sum()) / total for i, a in enumerate(order) if every[:, 2 + k + i].any()}
    return flags[:, 0], flags[:, 1], float(every[:, 0].max()), pooled


def _set_apgd_iterations(attack: Any, n_iter: int) -> None:
    """APGD derives its checkpoint schedule from n_iter in its constructor; recompute it as the constructor does."""
    attack.n_iter = attack.n_iter_orig = int(n_iter)
    attack.n_iter_2 = max(int(0.22 * n_iter), 1)
    attack.n_iter_min = max(int(0.06 * n_iter), 1)
    attack.size_decr = max(int(0.03 * n_iter), 1)


@torch.no_grad()
def _clean_correct(model: nn.Module, x: Tensor, y: Tensor, dev: torch.device, batch_size: int) -> Tensor:
    out = [model(x[i:i + batch_size].to(dev)).argmax(1).cpu() == y[i:i + batch_size].cpu()
           for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
