"""What the trainer measures, with every setting in one place.

| evaluation | images | attack | where the setting lives |
|---|---|---|---|
| per epoch (`evaluate`) | the first ``eval_n`` test images (2000) | PGD-``eval_steps`` (20), ``eval_restarts`` (1) | TrainConfig |
| CO check (`monitor`) | ``co_batch`` (256) test images, or the epoch's first training batch ("wong") | PGD-``co_steps`` (10), 1 restart | TrainConfig, `monitor` |
| end of run (`final_evaluation`) | the first ``final_n`` test images (1000) | PGD-50-10 (+ AutoAttack with ``pgd+aa``) | TrainConfig, `FINAL_STEPS`, `FINAL_RESTARTS` |

Every PGD here steps α = ε/4 (`config.EVAL_ALPHA_OVER_EPS`) from Π_box(U(−ε, ε)) with early stop, in eval mode (the
"wong" check in train mode), through `fastat.eval.pgd_robustness`; the per-epoch numbers are the ones
``metrics.jsonl`` and the plots show, the final ones go to ``final_eval.json`` (official max-loss accounting;
``pgd_any_acc`` beside it).
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

from torch import nn

from .config import EVAL_ALPHA_OVER_EPS
from .records import final_eval_table
from .state import BEST

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["FINAL", "FINAL_RESTARTS", "FINAL_STEPS", "evaluate", "final_evaluation"]

FINAL = "final_eval.json"
FINAL_STEPS, FINAL_RESTARTS = 50, 10


def evaluate(t: Trainer, model: nn.Module | None = None) -> dict[str, float]:
    """Clean and PGD-``eval_steps`` accuracy of ``model`` (the trainer's) on the fixed evaluation slice."""
    from ..eval import pgd_robustness

    cfg = t.cfg
    t.replicas.broadcast_buffers(t.model, t.ema)
    res = pgd_robustness(model or t.model, t.x_eval, t.y_eval, cfg.eps, EVAL_ALPHA_OVER_EPS * cfg.eps,
                         steps=cfg.eval_steps, restarts=cfg.eval_restarts,
                         precision="bf16" if cfg.precision == "bf16" else "fp32", seed=0, distributed=t.dist.enabled)
    return {"clean_acc": res.clean_acc, "pgd_acc": res.robust_acc, "eval_seconds": res.seconds}


def final_evaluation(t: Trainer) -> dict[str, Any]:
    """PGD-50-10 (fp32, seed 0) and, with ``final_eval="pgd+aa"``, standard AutoAttack on the first ``final_n`` test
    images, for the last weights, the best-PGD epoch's (``best.pt``, Rice et al.'s early stopping; "best vs last" is
    what CO hides) and the EMA weights. Written to ``final_eval.json`` and printed; also kept in ``t.final``. Sharded
    over the ranks under torchrun."""
    from ..eval import pgd_robustness, run_autoattack
    from .state import read

    cfg = t.cfg
    n = min(cfg.final_n, len(t.test_set))
    x = t.test_set.images[:n].float().div(255).to(t.device)
    y = t.test_set.labels[:n].long().to(t.device)
    t.replicas.broadcast_buffers(t.model, t.ema)
    models: dict[str, tuple[nn.Module, int]] = {"last": (t.model, t.epoch)}
    if t.out is not None and (t.out / BEST).exists():
        best = read(t, t.out / BEST)
        if best["epoch"] != t.epoch:
            model = copy.deepcopy(t.model)
            model.load_state_dict(best["model"])
            models["best"] = (model, int(best["epoch"]))
        else:
            models["best"] = (t.model, t.epoch)
    if t.ema is not None:
        models["ema"] = (t.ema, t.epoch)
    results: dict[str, dict[str, Any]] = {}
    alpha = EVAL_ALPHA_OVER_EPS * cfg.eps
    for name, (model, epoch) in models.items():
        if name == "best" and model is t.model:
            results[name] = dict(results["last"])
            continue
        r = pgd_robustness(model, x, y, cfg.eps, alpha, steps=FINAL_STEPS, restarts=FINAL_RESTARTS, seed=0,
                           progress=cfg.progress and t.dist.is_main, distributed=t.dist.enabled)
        res = {"epoch": epoch, "clean_acc": r.clean_acc, "pgd_acc": r.robust_acc_max_loss,
               "pgd_any_acc": r.robust_acc_any, "pgd_seconds": r.seconds}
        if cfg.final_eval == "pgd+aa":
            aa = run_autoattack(model, x, y, cfg.eps, version="standard", device=t.device, seed=0,
                                distributed=t.dist.enabled)
            res.update({"autoattack_acc": aa.robust_acc, "autoattack_seconds": aa.seconds})
        results[name] = res
    t.final = {"n": n, "eps": cfg.eps, "alpha": alpha, "steps": FINAL_STEPS, "restarts": FINAL_RESTARTS,
               "accounting": "max_loss (official); pgd_any_acc: any restart", "precision": "fp32",
               "world_size": t.dist.world_size, "models": results}
    if t.dist.is_main:
        if t.out is not None:
            (t.out / FINAL).write_text(json.dumps(t.final, indent=2) + "\n")
        print(f"final evaluation: PGD-{FINAL_STEPS}-{FINAL_RESTARTS} (alpha = eps/4) on {n} test images\n"
              + final_eval_table({t.out.name if t.out is not None else "run": t.final}), flush=True)
    return t.final
