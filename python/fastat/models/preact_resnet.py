"""PreActResNet-18 (He et al. 2016, identity mappings) as used by the fast-AT reference codes (methods.md §0.3).

Trunk: conv3×3(C→64) → 4 stages × 2 pre-activation blocks (widths 64/128/256/512, strides 1/2/2/2) → BN → ReLU →
global average pool → Linear(512→classes). With 3 input channels and 10 classes it has 11,172,170 parameters, the
count of WONG/NF/ATAS/ZG.

Differences from the reference files, on purpose:
- Pooling is adaptive (``AdaptiveAvgPool2d(1)``) instead of ``avg_pool2d(4)``, so any input size works: 32×32 CIFAR
  (a 4×4 map, identical to avg_pool2d(4)) and 28×28 Fashion-MNIST (a 4×4 map after the strides). avg_pool2d(4)
  silently floors a 5×5 map (40×40 padded inputs, ATAS's test-set pitfall) and pools only its top-left corner.
- Normalisation (optional) happens inside the model, so inputs are in [0, 1].
- Each block has an ``nn.Identity`` noise site after bn1 + ReLU (`PreActResNet.noise_sites`), where APART's
  layer-wise noise goes (methods.md §7). It has no parameters: state_dict keys and parameter counts are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .normalize import Normalize

SHORTCUTS = ("raw", "preact")


class PreActBlock(nn.Module):
    """out = conv2(relu(bn2(conv1(a)))) + shortcut, with a = noise_site(relu(bn1(x))).

    The projection shortcut (1×1 conv, when stride or width changes) reads the raw block input x (``shortcut="raw"``:
    WONG, NF, ATAS, GA, APART) or a (``shortcut="preact"``: the ZeroGrad repository, He et al.'s design).

    ``noise_site`` is an ``nn.Identity`` (a no-op unless hooked) at the official APART hook point: its
    `models/preresnet.py:29-47` adds α_b·sign(g_b) to the post-bn1-ReLU activation (methods.md §7). APART's own model has
    the raw shortcut, so there the noise reaches conv1 only; with ``shortcut="preact"`` the noised activation is the
    one the projection shortcut reads (noise on the activation itself, and g_b its gradient through both paths).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "raw"):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.noise_site = nn.Identity()
        self.shortcut_on_preact = shortcut == "preact"
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.noise_site(F.relu(self.bn1(x)))
        if self.shortcut is None:
            skip = x
        else:
            skip = self.shortcut(out if self.shortcut_on_preact else x)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet(nn.Module):
    """Pre-activation ResNet with ``num_blocks`` blocks per stage (PreActResNet-18: [2, 2, 2, 2]).

    Args:
        num_blocks: blocks in each of the four stages.
        in_channels: input channels (1 for (Fashion-)MNIST, 3 for CIFAR/SVHN).
        num_classes: output classes.
        mean, std: per-channel normalisation applied first (None: inputs used as they are).
        shortcut: "raw" (projection on the raw block input; the common variant) or "preact" (on relu(bn1(x)); ZG).
        final_bn: apply BN → ReLU before pooling (True everywhere except GA's models.py, which omits it).
        width: channels of the first stage (64 in the papers; smaller values make tiny test models).
    """

    def __init__(self, num_blocks: Sequence[int] = (2, 2, 2, 2), *, in_channels: int = 3, num_classes: int = 10,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, shortcut: str = "raw",
                 final_bn: bool = True, width: int = 64):
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"PreActResNet: argument 'shortcut' must be one of {SHORTCUTS}, got {shortcut!r}")
        if width < 1:
            raise ValueError(f"PreActResNet: argument 'width' must be >= 1, got {width}")
        self.normalize = Normalize(in_channels, mean, std)
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        in_planes = width
        stages = []
        for i, blocks in enumerate(num_blocks):
            planes = width * 2**i
            layers = []
            for j in range(blocks):
                stride = 1 if i == 0 or j > 0 else 2
                layers.append(PreActBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(in_planes) if final_bn else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn is not None:
            out = F.relu(self.bn(out))
        return self.linear(self.pool(out).flatten(1))

    def noise_sites(self) -> list[nn.Module]:
        """Each block's post-bn1-ReLU ``nn.Identity``, in forward order (8 for PreActResNet-18): the modules where
        APART adds its layer-wise noise α_b·sign(g_b) (`fastat.methods.APART.attach` adopts them)."""
        return [block.noise_site for stage in (self.layer1, self.layer2, self.layer3, self.layer4) for block in stage]


def preact_resnet18(**kw) -> PreActResNet:
    """PreActResNet-18; keyword arguments as `PreActResNet`."""
    return PreActResNet((2, 2, 2, 2), **kw)
