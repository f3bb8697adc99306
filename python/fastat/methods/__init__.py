"""fastat.methods: the fast adversarial training methods, each a small `Method` with the official defaults.

>>> method = build_method("zerograd", eps=8 / 255, q=0.35)
>>> x_adv = method.perturb(model, x, y, batch)          # detached, in [0, 1] and in the method's ball
>>> loss = F.cross_entropy(model(x_adv), y)
>>> reg = method.extra_loss(model, x, y, x_adv, batch)  # GradAlign's regulariser, None for the others

Every default follows the authors' public code as written down in docs/methods.md (α in absolute units, defaulting
to the method's multiple of ε); each class docstring lists where it deviates on purpose.
"""

from __future__ import annotations

import inspect
from typing import Any

from .apart import APART
from .atas import ATAS
from .base import BN_MODES, Method, attack_mode, frozen_parameters, input_grad
from .fgsm import FGSM, FGSMRS, NFGSM
from .gradalign import GradAlign, grad_align_lambda, gradient_alignment
from .nuat import NuAT
from .pgd import PGD
from .pgi import FGSMPGI
from .sora import SORA
from .zerograd import MultiGrad, ZeroGrad

__all__ = [
    "METHODS",
    "ALIASES",
    "build_method",
    "canonical_name",
    "method_names",
    "without_placement",
    "Method",
    "BN_MODES",
    "FGSM",
    "FGSMRS",
    "NFGSM",
    "ZeroGrad",
    "MultiGrad",
    "ATAS",
    "GradAlign",
    "APART",
    "PGD",
    "NuAT",
    "SORA",
    "FGSMPGI",
    "attack_mode",
    "frozen_parameters",
    "input_grad",
    "grad_align_lambda",
    "gradient_alignment",
]

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (FGSM, FGSMRS, NFGSM, ZeroGrad, MultiGrad, ATAS, GradAlign, APART, PGD, NuAT, SORA,
                              FGSMPGI)
}

# Other spellings users type; normalised names have '-' and ' ' replaced by '_' and are lower case.
ALIASES = {
    "fgsmrs": "fgsm_rs",
    "rs_fgsm": "fgsm_rs",
    "nfgsm": "n_fgsm",
    "zero_grad": "zerograd",
    "multi_grad": "multigrad",
    "grad_align": "gradalign",
    "pgd_at": "pgd",
    "nu_at": "nuat",
    "pgi": "fgsm_pgi",
    "fgsmpgi": "fgsm_pgi",
}


def canonical_name(name: str) -> str:
    """The registry name of a method name as users type it ("FGSM-RS", "rs_fgsm" -> "fgsm_rs"); unknown names come
    back normalised (check them against `METHODS`)."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    return ALIASES.get(key, key)


def without_placement(hparams: dict[str, Any]) -> dict[str, Any]:
    """``hparams`` without the methods' placement hyper-parameters (`Method.placement_hparams`, e.g. ATAS's
    ``state_device``): where a process keeps its state, which two runs of one experiment may choose differently."""
    placement = {name for cls in METHODS.values() for name in cls.placement_hparams}
    return {k: v for k, v in hparams.items() if k not in placement}


def method_names() -> list[str]:
    """The registered method names."""
    return list(METHODS)


def build_method(name: str, *, eps: float, run_epochs: int | None = None, **hparams: Any) -> Method:
    """Instantiate a method by name ("fgsm", "fgsm_rs", "n_fgsm", "zerograd", "multigrad", "atas", "gradalign",
    "apart", "pgd", "nuat", "sora", "fgsm_pgi"; dashes and the aliases in `ALIASES` are accepted) with ε and its own hyper-parameters.
    ``run_epochs``: the run's length, given as ``epochs`` to the methods that take it (ATAS, NuAT) unless ``hparams`` sets
    it.

    Unknown names raise ValueError listing the known ones; unknown hyper-parameters raise TypeError listing the
    method's.
    """
    if not isinstance(name, str):
        raise TypeError(f"fastat.methods.build_method: argument 'name' must be a str, got {type(name).__name__}")
    cls = METHODS.get(canonical_name(name))
    if cls is None:
        raise ValueError(f"fastat.methods.build_method: unknown method {name!r}; known: {', '.join(METHODS)}")
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "eps")]
    if run_epochs is not None and "epochs" in accepted:
        hparams.setdefault("epochs", run_epochs)
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise TypeError(f"fastat.methods.build_method: method {cls.name!r} has no hyper-parameter "
                        f"{', '.join(map(repr, unknown))}; it takes {', '.join(accepted)}")
    return cls(eps=eps, **hparams)
