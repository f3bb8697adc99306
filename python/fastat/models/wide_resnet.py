"""WideResNet-d-k (Zagoruyko & Komodakis 2016) in the form the robustness literature uses (TRADES, ATAS, NF).

depth = 6n + 4 with n blocks per stage; widths 16 → 16k/32k/64k, strides 1/2/2; final BN → ReLU → global average
pool (adaptive, so any input size works; see `preact_resnet` for why not avg_pool2d(8)) → Linear. Parameters with 3
input channels and 10 classes: WRN-28-10 36,479,194; WRN-34-10 46,160,474. Init as that code: conv ~ N(0, 2/(k²·C_out)),
BN γ=1, β=0, linear bias 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .normalize import Normalize


class WideBasicBlock(nn.Module):
    """Pre-activation block; when the width changes, the 1×1 shortcut reads relu(bn1(x)) (the reference layout)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal_in_out = in_planes == planes
        self.shortcut = None if self.equal_in_out else nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride,
                                                                  bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-widen_factor.

    Args:
        depth: 6n + 4 (28 or 34 in the papers).
        widen_factor: k (10 in the papers).
        in_channels, num_classes, mean, std: as `PreActResNet`.
        dropout: dropout probability between the two convolutions of a block (0 by default; NF's WRN uses 0.3).
    """

    def __init__(self, depth: int = 28, widen_factor: int = 10, *, in_channels: int = 3, num_classes: int = 10,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, dropout: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet: argument 'depth' must be 6n + 4 with n >= 1, got {depth}")
        if widen_factor < 1:
            raise ValueError(f"WideResNet: argument 'widen_factor' must be >= 1, got {widen_factor}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.normalize = Normalize(in_channels, mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        stages = []
        for i, stride in enumerate((1, 2, 2)):
            blocks = [WideBasicBlock(widths[i] if j == 0 else widths[i + 1], widths[i + 1], stride if j == 0 else 1,
                                     dropout) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(widths[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn(out))
        return self.fc(self.pool(out).flatten(1))
