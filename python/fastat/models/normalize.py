"""Per-channel normalisation inside the model, so attacks and ε live in [0, 1] pixel space.

AutoAttack, RobustBench and every fastat attack feed images in [0, 1]; the model normalises them itself
(fra31/auto-attack#13, #46, #55). This is GA's and ATAS's choice (methods.md §0.1); WONG/NF normalise in the loader and
divide ε by σ instead, which is equivalent up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def pixel_range_error(x: Tensor) -> str | None:
    """None when every value of ``x`` lies in [0, 1] (pixel space), else the complaint about argument 'x' (NaN is
    outside too; 0..255 and normalised images are the classic mistakes). Reads x's min and max on the host."""
    lo, hi = (float(v) for v in torch.aminmax(x.detach().float()))
    if 0.0 <= lo and hi <= 1.0:
        return None
    return (f"argument 'x' must be images in [0, 1] (pixel space; normalisation belongs inside the model), got "
            f"values in [{lo:.4g}, {hi:.4g}]")


class Normalize(nn.Module):
    """y = (x − μ_c) / σ_c per channel; the identity when ``mean`` and ``std`` are None.

    Args:
        in_channels: C, the number of input channels.
        mean, std: C values each (or one value, broadcast to all channels), or both None.
    """

    def __init__(self, in_channels: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("Normalize: arguments 'mean' and 'std' must be given together (or both None)")
        self.enabled = mean is not None
        if self.enabled:
            mean_t = _per_channel("mean", mean, in_channels)
            std_t = _per_channel("std", std, in_channels)
            if bool((std_t <= 0).any()):
                raise ValueError(f"Normalize: argument 'std' must be > 0, got {std_t.flatten().tolist()}")
            self.register_buffer("mean", mean_t)
            self.register_buffer("std", std_t)

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        if not self.enabled:
            return "identity"
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _per_channel(name: str, values: Sequence[float], in_channels: int) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(in_channels).clone()
    if t.numel() != in_channels:
        raise ValueError(f"Normalize: argument '{name}' must have 1 or in_channels={in_channels} values, "
                         f"got {t.numel()}")
    return t.view(1, in_channels, 1, 1)
