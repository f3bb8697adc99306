"""A small CNN for fast CPU runs and tests (not a paper architecture).

conv3×3(C→w) → BN → ReLU → conv3×3(w→2w, stride 2) → BN → ReLU → conv3×3(2w→4w, stride 2) → BN → ReLU →
flatten → Linear(4w·⌈H/4⌉·⌈W/4⌉ → hidden) → ReLU → Linear(hidden → classes). With w=32, hidden=128 and 28×28×1 inputs
it has about 0.9 M parameters and trains an epoch of Fashion-MNIST on 2 CPU cores in well under a minute.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .normalize import Normalize


def _conv_bn(c_in: int, c_out: int, stride: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU())
    return layers


class SmallCNN(nn.Module):
    """Three conv layers and two linear layers.

    Args:
        in_channels, num_classes, mean, std: as `PreActResNet`.
        input_size: (H, W) of the inputs (sizes the first linear layer).
        width: channels of the first conv (w); the others are 2w and 4w.
        hidden: width of the hidden linear layer.
        batch_norm: use BatchNorm after each conv (so BN train/eval-mode behaviour is exercised in tests).
    """

    def __init__(self, *, in_channels: int = 1, num_classes: int = 10, input_size: Sequence[int] = (28, 28),
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, width: int = 32,
                 hidden: int = 128, batch_norm: bool = True):
        super().__init__()
        h, w = input_size
        self.normalize = Normalize(in_channels, mean, std)
        self.features = nn.Sequential(*_conv_bn(in_channels, width, 1, batch_norm),
                                      *_conv_bn(width, 2 * width, 2, batch_norm),
                                      *_conv_bn(2 * width, 4 * width, 2, batch_norm))
        flat = 4 * width * (-(-h // 4)) * (-(-w // 4))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(self.normalize(x)))
