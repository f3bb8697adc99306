"""The values a run trains with where the user gives none: the model per device, the peak learning rate per model
and batch size, and the ε warm-up per data set. `TrainConfig` keeps ``None`` for each ("the recipe's"), the trainer
resolves it here once, and ``run.json`` / the checkpoint's resolved config record the value used.

Learning rate. The official recipes use a cyclic peak of 0.2 at batch 128 for PreActResNet-18 and WideResNets
(WONG, NF, ZG; methods.md §0.4). For smaller batches the peak scales down linearly (the gradient noise grows as the
batch shrinks); above 128 it stays at the reference value rather than growing, because large-batch FGSM training at
linearly scaled rates diverges (the 512-image batches of docs/gpu-baseline.md train at 0.2). The small CNN is not a
paper architecture: its reference rate was measured on Fashion-MNIST (2026-12-07, 2-core CPU; see
docs/results/co_atlas.md): at batch 64 a peak of 0.1 left N-FGSM (noise ε) at chance from epoch 4 at ε = 0.25,
0.05 trained every method.

ε warm-up. N-FGSM and GradAlign ramp ε (and α with it) linearly from 0 over the first 5 epochs on SVHN (NF
`train.py:149-156,206-211`; GA ramps α alone, `train.py:166-168`), where FGSM-type training from scratch otherwise
stays at chance. fastat does the same on SVHN by default (``--eps-warmup 5``) and nowhere else; ``--eps-warmup E``
turns it on for any data set (a model that stays at chance names it).
"""

from __future__ import annotations

__all__ = ["REFERENCE_BATCH", "default_eps_warmup", "default_lr", "default_model"]

REFERENCE_BATCH = 128
# the cyclic peak at `REFERENCE_BATCH` per model (see the module docstring)
_REFERENCE_LR = {"preact18": 0.2, "wrn28-10": 0.2, "wrn34-10": 0.2, "small-cnn": 0.1}
_EPS_WARMUP = {"svhn": 5.0}


def default_model(device_type: str) -> str:
    """The model a config without one trains: PreActResNet-18 on CUDA, the small CNN on the CPU."""
    return "preact18" if device_type == "cuda" else "small-cnn"


def default_lr(model: str, batch_size: int) -> float:
    """The cyclic peak learning rate for ``model`` at global batch ``batch_size``: the model's reference rate at
    batch 128, scaled down linearly below it and kept above it."""
    base = _REFERENCE_LR.get(model, _REFERENCE_LR["preact18"])
    return round(base * min(1.0, batch_size / REFERENCE_BATCH), 6)


def default_eps_warmup(dataset: str) -> float:
    """Epochs over which ε and α ramp up linearly from ~0 by default: 5 on SVHN (NF, GA), else 0 (off)."""
    return _EPS_WARMUP.get(dataset, 0.0)
