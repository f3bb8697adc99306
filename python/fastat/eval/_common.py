"""Helpers shared by the evaluator, AutoAttack wrapper and diagnostics: model mode, device, precision, input checks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .. import _checks as checks
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.normalize import pixel_range_error

PRECISIONS = ("fp32", "bf16")


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put every module of ``models`` in eval mode; restore each module's own flag afterwards (mixed modes too)."""
    saved = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def autocast(device: torch.device, precision: str, *, cache_enabled: bool = True):
    """bf16 (or fp16) autocast for the forward pass, or nothing for fp32; δ, losses and gradients stay fp32 either
    way. ``cache_enabled=False`` for a CUDA-graph capture (cached weight casts would be stale on replay)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16,
                          cache_enabled=cache_enabled)


def logits_of(model: nn.Module, x: Tensor, precision: str) -> Tensor:
    """fp32 logits of ``model(x)`` under the requested precision."""
    with autocast(x.device, precision):
        out = model(x)
    return out.float()


def input_gradient(model: nn.Module, x: Tensor, y: Tensor, precision: str = "fp32") -> tuple[Tensor, Tensor, Tensor]:
    """(∇_x ℓ_i per sample, logits, per-sample CE) for ℓ summed over the batch, so row i's gradient is ∂ℓ_i/∂x_i.

    Only the input gradient is computed (torch.autograd.grad on x): no weight gradients, parameters untouched.
    """
    xa = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = logits_of(model, xa, precision)
        loss = F.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), xa)
    return grad, logits.detach(), loss.detach()


def check_choice(fn: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    checks.choice(fn, name, value, choices)


def check_positive(fn: str, name: str, value: float) -> None:
    checks.positive(fn, name, value)


def check_int(fn: str, name: str, value: int, minimum: int) -> None:
    checks.integer(fn, name, value, minimum)


def check_inputs(fn: str, x: Tensor, y: Tensor) -> None:
    """x: (N, ...) floating in [0, 1] with N >= 1; y: (N,) integer labels."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"{fn}: argument 'x' must be a floating (N, ...) tensor with N >= 1")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        raise ValueError(f"{fn}: argument 'y' must be an integer ({x.shape[0]},) tensor")
    problem = pixel_range_error(x)
    if problem:
        raise ValueError(f"{fn}: {problem}")
