"""Tiny CPU models, data and checkpoints for the evaluator tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fastat.checkpoint import save_checkpoint
from fastat.data import write_idx
from fastat.models import build_model

# the small CNN of the `fastat eval` CLI tests (Fashion-MNIST shaped)
CLI_MODEL = {"name": "small-cnn", "in_channels": 1, "num_classes": 10, "input_size": (28, 28), "mean": [0.286],
             "std": [0.353], "width": 4, "hidden": 16}


def write_fake_fmnist(root: Path, n_test: int, n_train: int = 8) -> Path:
    """Random Fashion-MNIST-shaped IDX files (train and t10k) under ``root``, which is returned."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,), dtype=np.uint8))
    return root


def save_cli_checkpoint(path: Path, epoch: int) -> Path:
    """A checkpoint of `CLI_MODEL` (seed 0) at ``path``, trained "on" Fashion-MNIST with ε = 0.1."""
    torch.manual_seed(0)
    kw = {k: v for k, v in CLI_MODEL.items() if k != "name"}
    return save_checkpoint(path, model=build_model("small-cnn", **kw), model_config=CLI_MODEL,
                           dataset="fashion-mnist", eps=0.1, epoch=epoch)


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
