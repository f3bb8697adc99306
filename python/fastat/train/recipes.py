"""The values a run trains with where the user gives none: ε per data set, the model per device, the peak learning
rate per model and batch size, and the ε warm-up per data set and model. `TrainConfig` keeps ``None`` for each ("the
recipe's"); ε is filled in by `TrainConfig.validate`, the others by the trainer, once, and ``run.json`` / the
checkpoint's resolved config record the value used.

ε. Each data set's customary budget (`fastat.data.SPECS`): Fashion-MNIST 0.1, MNIST 0.3, CIFAR-10/100 and SVHN
8/255 (image folders 8/255). A single default for all (it was 0.2) left CIFAR runs at chance: 0.2 is 51/255.

Learning rate. The official recipes use a cyclic peak of 0.2 at batch 128 for PreActResNet-18 and WideResNets
(WONG, NF, ZG; methods.md §0.4). For smaller batches the peak scales down linearly (the gradient noise grows as the
batch shrinks); above 128 it stays at the reference value rather than growing, because large-batch FGSM training at
linearly scaled rates diverges (the 512-image batches of docs/gpu-baseline.md train at 0.2). The small CNN is not a
paper architecture: its reference rate was measured on Fashion-MNIST (2026-12-07, 2-core CPU; see
docs/results/co_atlas.md): at batch 64 a peak of 0.1 left N-FGSM (noise ε) at chance from epoch 4 at ε = 0.25,
0.05 trained every method.

ε warm-up. N-FGSM and GradAlign ramp ε (and α with it) linearly from 0 over the first 5 epochs on SVHN (NF
`train.py:149-156,206-211`; GA ramps α alone, `train.py:166-168`), where FGSM-type training from scratch otherwise
stays at chance. fastat does the same on SVHN by default (``--eps-warmup 5``). The small CNN on CIFAR-10/100 gets 2
epochs: measured with a plain loop (issue 18, 5000 CIFAR-10 images, FGSM-RS at 8/255), it sat at loss 2.3027 for 3
epochs at lr 0.05 and at 0.01 without a warm-up and reached 42% clean after 4 epochs with a 2-epoch ramp. Nowhere
else by default; ``--eps-warmup E`` turns it on for any run (a model that stays at chance names it).
"""

from __future__ import annotations

__all__ = ["REFERENCE_BATCH", "default_eps", "default_eps_warmup", "default_lr", "default_model", "divergence_hint"]

REFERENCE_BATCH = 128
# the cyclic peak at `REFERENCE_BATCH` per model (see the module docstring)
_REFERENCE_LR = {"preact18": 0.2, "wrn28-10": 0.2, "wrn34-10": 0.2, "small-cnn": 0.1}
_EPS_WARMUP = {("svhn", None): 5.0, ("cifar10", "small-cnn"): 2.0, ("cifar100", "small-cnn"): 2.0}


def default_eps(dataset: str) -> float:
    """The data set's customary ℓ∞ budget in pixel units (``dataset``: a canonical name); 8/255 for image folders."""
    from ..data import SPECS

    spec = SPECS.get(dataset)
    return spec.eps if spec is not None else 8 / 255


def default_model(device_type: str) -> str:
    """The model a config without one trains: PreActResNet-18 on CUDA, the small CNN on the CPU."""
    return "preact18" if device_type == "cuda" else "small-cnn"


def default_lr(model: str, batch_size: int) -> float:
    """The cyclic peak learning rate for ``model`` at global batch ``batch_size``: the model's reference rate at
    batch 128, scaled down linearly below it and kept above it."""
    base = _REFERENCE_LR.get(model, _REFERENCE_LR["preact18"])
    return round(base * min(1.0, batch_size / REFERENCE_BATCH), 6)


def default_eps_warmup(dataset: str, model: str | None = None) -> float:
    """Epochs over which ε and α ramp up linearly from ~0 by default: 5 on SVHN (NF, GA), 2 for the small CNN on
    CIFAR-10/100, else 0 (off)."""
    return _EPS_WARMUP.get((dataset, model), _EPS_WARMUP.get((dataset, None), 0.0))


def divergence_hint(*, epoch: int, reason: str, model: str, batch_size: int, lr_max: float, eps: float, epochs: int,
                    eps_warmup: float, method_hint: str | None = None) -> str:
    """The one line a dead run stops with: what was seen, the likely cause, and the recipe flags to change
    (``method_hint``: the method's own knob, `Method.divergence_hint`)."""
    k = eps * 255
    shown = f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:g}"
    if eps_warmup:
        cause, warm = f"eps {shown} reached too soon (warmed up over {eps_warmup:g} epochs)", "a longer --eps-warmup"
    else:
        cause, warm = f"the full eps {shown} from scratch", f"--eps-warmup {max(1, epochs // 5)}"
    own = f", or {method_hint}" if method_hint else ""
    return (f"fastat train: stopped at epoch {epoch}, the model is dead: {reason}. Likely cause: a learning rate too "
            f"high for {model} at batch {batch_size} (--lr-max {lr_max:g}), or {cause}{own}; try --lr-max "
            f"{lr_max / 2:g} or {warm} (--on-diverge log trains on)")
