"""Models for fast adversarial training; all take inputs in [0, 1] and normalise inside (see `normalize`).

`build_model(name, *, in_channels, num_classes, input_size, mean=None, std=None, **kw)` builds one by name:

| name        | architecture                                      | extra keyword arguments                  |
|-------------|---------------------------------------------------|------------------------------------------|
| "preact18"  | PreActResNet-18 (`preact_resnet`)                 | shortcut="raw"/"preact", final_bn, width |
| "wrn28-10"  | WideResNet-28-10 (`wide_resnet`)                  | dropout                                  |
| "wrn34-10"  | WideResNet-34-10                                  | dropout                                  |
| "small-cnn" | 3-conv CNN for CPU runs and tests (`small_cnn`)   | width, hidden, batch_norm                |

Any `nn.Module` mapping (B, C, H, W) inputs in [0, 1] to (B, classes) logits can be used wherever fastat takes a model;
`build_model` is only needed to rebuild one from a checkpoint's ``model_config``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from .normalize import Normalize
from .preact_resnet import PreActBlock, PreActResNet, preact_resnet18
from .small_cnn import SmallCNN
from .wide_resnet import WideBasicBlock, WideResNet

__all__ = [
    "MODELS",
    "build_model",
    "model_config_for",
    "input_hw",
    "Normalize",
    "PreActBlock",
    "PreActResNet",
    "preact_resnet18",
    "SmallCNN",
    "WideBasicBlock",
    "WideResNet",
]


def _preact18(in_channels, num_classes, input_size, mean, std, **kw) -> nn.Module:
    return PreActResNet((2, 2, 2, 2), in_channels=in_channels, num_classes=num_classes, mean=mean, std=std, **kw)


def _wrn(depth: int) -> Callable[..., nn.Module]:
    def build(in_channels, num_classes, input_size, mean, std, **kw) -> nn.Module:
        return WideResNet(depth, 10, in_channels=in_channels, num_classes=num_classes, mean=mean, std=std, **kw)
    return build


def _small_cnn(in_channels, num_classes, input_size, mean, std, **kw) -> nn.Module:
    return SmallCNN(in_channels=in_channels, num_classes=num_classes, input_size=input_size, mean=mean, std=std, **kw)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "preact18": _preact18,
    "wrn28-10": _wrn(28),
    "wrn34-10": _wrn(34),
    "small-cnn": _small_cnn,
}


def input_hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) from an int (square) or a pair; raises ValueError naming ``input_size`` otherwise."""
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        hw = (input_size, input_size)
    else:
        try:
            hw = tuple(int(v) for v in input_size)
        except TypeError:
            hw = ()
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"build_model: argument 'input_size' must be a positive int or (H, W), got {input_size!r}")
    return hw  # type: ignore[return-value]


def model_config_for(name: str, dataset, **overrides) -> dict:
    """`build_model` keyword arguments (with ``name``) for a data set's images: channels, classes, size and its
    normalisation constants, then ``overrides`` (architecture options); what checkpoints store as ``model_config``."""
    return {"name": name, "in_channels": dataset.in_channels, "num_classes": dataset.num_classes,
            "input_size": list(dataset.input_size), "mean": None if dataset.mean is None else list(dataset.mean),
            "std": None if dataset.std is None else list(dataset.std), **overrides}


def build_model(name: str, *, in_channels: int, num_classes: int, input_size: int | Sequence[int],
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None, **kw) -> nn.Module:
    """Build a model by name (see the table above); inputs are (B, in_channels, H, W) in [0, 1].

    Args:
        name: "preact18", "wrn28-10", "wrn34-10" or "small-cnn".
        in_channels: C of the inputs.
        num_classes: number of output logits.
        input_size: H (square) or (H, W). The ResNets pool adaptively, so it only sizes the small CNN's linear layer.
        mean, std: per-channel normalisation applied inside the model (None: no normalisation).
        **kw: architecture options (see the table).
    """
    if name not in MODELS:
        raise ValueError(f"build_model: argument 'name' must be one of {', '.join(MODELS)}, got {name!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"build_model: argument 'in_channels' must be a positive int, got {in_channels!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"build_model: argument 'num_classes' must be an int >= 2, got {num_classes!r}")
    hw = input_hw(input_size)
    try:
        return MODELS[name](in_channels, num_classes, hw, mean, std, **kw)
    except TypeError as exc:  # an unknown architecture option
        raise ValueError(f"build_model: bad option for model {name!r}: {exc}") from None
