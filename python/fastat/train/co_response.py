"""What the trainer does once an epoch is flagged: the CO roll-back (restore ``last_good.pt``, keep the hyper-parameters
and roll-back events since, make the method less prone to CO) and the one-line messages that say so.

Detection lives in `monitor` (which epoch is CO, which model is dead); this module owns the response, so a new
detector needs no change here and a new remedy no change there.
"""

from __future__ import annotations

from typing import Any

from ..methods.base import StrengthenLimit
from . import state

__all__ = ["check_text", "roll_back", "strengthen"]


def strengthen(method: Any, *, q_step: float = 0.1, alpha_factor: float = 0.8) -> str:
    """Make ``method`` less prone to CO after a roll-back (`Method.strengthen`: each method turns its own knob);
    returns what changed, for the log."""
    change = method.strengthen(q_step=q_step, alpha_factor=alpha_factor)
    return change or "no hyper-parameter to change"


def check_text(monitor: Any, value: float) -> str:
    """The CO check's number as the CO messages print it, named by the detector (its ``label``)."""
    return f"{monitor.label} {value:.3f}"


def roll_back(trainer: Any, epoch: int, co_acc: float) -> bool:
    """`Trainer`'s answer to a CO epoch under ``on_co="rollback"``: restore ``last_good.pt``, keep the
    hyper-parameters and roll-back events since, strengthen the method, and go on from the restored epoch (True); False
    (training stops at the restored epoch, saying why) when the method cannot be made more conservative."""
    cfg = trainer.cfg
    hparams = dict(trainer.method.state_dict()["hparams"])  # keep earlier roll-backs' changes
    rollbacks, history = trainer.rollbacks, list(trainer.history)
    trainer.load(trainer.out / state.GOOD)
    trainer.monitor.after_rollback()
    trainer.method.set_hparams(**hparams)
    # the count and the events of roll-backs since the good checkpoint survive the load
    trainer.history += [r for r in history[len(trainer.history):] if r.get("event") == "rollback"]
    if trainer.writer is not None:
        trainer.writer.rows = list(trainer.history)
    trainer.rollbacks = rollbacks + 1
    flagged = f"CO at epoch {epoch} ({check_text(trainer.monitor, co_acc)})"
    try:
        change = strengthen(trainer.method, q_step=cfg.q_step, alpha_factor=cfg.alpha_factor)
    except StrengthenLimit as exc:
        trainer.say(f"{flagged}: rolled back to epoch {trainer.epoch} and stopped: {exc}")
        trainer._log({"event": "stop", "at_epoch": epoch, "to_epoch": trainer.epoch, "reason": str(exc)})
        trainer.save(trainer.out / state.CKPT)
        return False
    trainer.say(f"{flagged}: rolled back to epoch {trainer.epoch}, {change}")
    trainer._log({"event": "rollback", "at_epoch": epoch, "to_epoch": trainer.epoch, "change": change,
                  trainer.monitor.metric: co_acc})
    trainer.save(trainer.out / state.CKPT)
    return True
