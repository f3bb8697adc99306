"""Tiny models and batches for the method tests (CPU, 1×8×8 inputs, 3 classes)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastat.batch import BatchInfo

EPS = 0.1
ROUND = 1e-6  # |x_adv − x| is computed in fp32: x + δ − x may exceed fp32(ε) by an ulp or so


class ModeRecorder(nn.Module):
    """Identity that records whether it ran in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(self.training)
        return x


def tiny_net(bn: bool = False, seed: int = 0) -> nn.Sequential:
    """conv(1→4) [BN] ReLU conv(4→4, stride 2) ReLU linear(64→3), with a ModeRecorder first."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [ModeRecorder(), nn.Conv2d(1, 4, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)]
    return nn.Sequential(*layers)


def data(b: int = 6, seed: int = 1) -> tuple[Tensor, Tensor]:
    """x in [0, 1] with exact 0s and 1s (saturated pixels, as in Fashion-MNIST's background), labels in {0, 1, 2}."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, 8, 8, generator=g)
    x[:, :, :2] = 0.0
    x[:, :, -1] = 1.0
    return x, torch.randint(0, 3, (b,), generator=g)


def batch_info(b: int = 6, n: int = 10, pad: int = 2, epoch: int = 1, crop: bool = True, seed: int = 2) -> BatchInfo:
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(n, generator=g)[:b]
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=g) if crop else None
    flips = torch.rand(b, generator=g) < 0.5 if crop else None
    return BatchInfo(index=index, num_examples=n, pad=pad, offsets=offsets, flips=flips, epoch=epoch)
