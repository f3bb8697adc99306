"""Tiny CPU models for the evaluator tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def tiny_cnn(classes: int = 5) -> nn.Module:
    """Conv → BN → ReLU → conv(stride 2) → ReLU → linear, for 1×8×8 inputs; eval mode, fixed seed."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, classes)).eval()


def tiny_data(n: int = 48, seed: int = 1, model: nn.Module | None = None) -> tuple[Tensor, Tensor]:
    """Uniform 1×8×8 inputs; labels are the model's predictions (so clean accuracy is 1) when a model is given."""
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    if model is None:
        return x, torch.zeros(n, dtype=torch.int64)
    with torch.no_grad():
        return x, model.eval()(x).argmax(1)


class Linear2(nn.Module):
    """A two-class linear classifier f(x) = W·flatten(x) + b."""

    def __init__(self, weight: Tensor, bias: Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.weight.t() + self.bias


class Switch(nn.Module):
    """Piecewise-constant logits chosen by the first pixel (> 0.5: ``high``, else ``low``); zero input gradient."""

    def __init__(self, high: list[float], low: list[float]):
        super().__init__()
        self.register_buffer("high", torch.tensor(high))
        self.register_buffer("low", torch.tensor(low))

    def forward(self, x: Tensor) -> Tensor:
        first = x.flatten(1)[:, :1]
        return torch.where(first > 0.5, self.high, self.low) + 0.0 * first
