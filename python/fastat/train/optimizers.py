"""The optimisers of a training run, built once by `Trainer`: SGD on the model's weights with its per-batch lr
schedule, SGD on a method's own parameters when it has some (APART's noise-site scalars, with the method's official
``param_optimizer`` settings), the fp16 GradScaler and the EMA copy of the weights (`update_ema`).

In CUDA-graph mode every lr is a device tensor that the captured optimiser step reads, and SGD takes its fused path
(the default foreach path would read a tensor lr on the host).
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import torch
from torch import nn

from .schedules import make_scheduler

__all__ = ["Optimizers", "build_optimizers", "update_ema"]


class Optimizers(NamedTuple):
    optimizer: torch.optim.Optimizer
    scheduler: Any
    param_optimizer: torch.optim.Optimizer | None  # the method's own parameters, else None
    param_scheduler: Any
    scaler: torch.amp.GradScaler
    ema: nn.Module | None  # the EMA copy of the model (eval mode, no grad), else None


def build_optimizers(model: nn.Module, method: Any, cfg: Any, *, steps: int, lr_max: float, device: torch.device,
                     graph_mode: bool) -> Optimizers:
    """The optimisers for ``steps`` optimiser steps of ``model`` and ``method`` under `TrainConfig` ``cfg``."""

    def lr(value: float) -> float | torch.Tensor:
        return torch.tensor(float(value), device=device) if graph_mode else value

    fused = {"fused": True} if graph_mode else {}
    optimizer = torch.optim.SGD(model.parameters(), lr=lr(lr_max), momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, **fused)
    scheduler = make_scheduler(optimizer, cfg.lr_schedule, steps, peak=cfg.lr_peak, milestones=cfg.milestones)
    param_optimizer = param_scheduler = None
    if method.parameters():
        po = dict(getattr(method, "param_optimizer", {}) or {})
        param_optimizer = torch.optim.SGD(method.parameters(), lr=lr(po.get("lr_max", 5e-8)),
                                          momentum=po.get("momentum", 0.9), weight_decay=po.get("weight_decay", 0.0),
                                          **fused)
        param_scheduler = make_scheduler(param_optimizer, po.get("lr_schedule", "cyclic"), steps, peak=0.5)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    ema = None
    if cfg.ema:
        ema = copy.deepcopy(model).eval()
        for p in ema.parameters():
            p.requires_grad_(False)
    return Optimizers(optimizer, scheduler, param_optimizer, param_scheduler, scaler, ema)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay · ema + (1 − decay) · model for the parameters (one update per optimiser step); buffers (BatchNorm
    statistics) copied."""
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.mul_(decay).add_(p.detach(), alpha=1 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)
