"""`TrainConfig`: everything a run needs, validated before any training starts (errors are one clear line)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .schedules import SCHEDULES

PRECISIONS = ("fp32", "bf16", "fp16")
EVAL_ALPHA_OVER_EPS = 0.25  # the step of every PGD the trainer runs (per epoch, CO check, final): α = ε/4
COMPILE_MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs")
FINAL_EVALS = ("none", "pgd", "pgd+aa")

__all__ = ["COMPILE_MODES", "EVAL_ALPHA_OVER_EPS", "PRECISIONS", "ConfigError", "TrainConfig", "option", "parse_number",
           "parse_value"]


class ConfigError(ValueError):
    """Bad training input; the message is one line naming the argument."""


def parse_number(text: Any, name: str = "value") -> float:
    """A float from a number or a string like "0.2", "8/255" (`fastat._checks.parse_number`), as ConfigError."""
    from .. import _checks

    try:
        return _checks.parse_number(text, name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _number_or_none(value: Any, name: str) -> float | None:
    """A method hyper-parameter given as a number (or None); ConfigError naming it otherwise."""
    return None if value is None else parse_number(value, name)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_value(text: str, name: str = "value") -> Any:
    """A command-line value: true/false/none, an int, a number (0.2, 8/255), a JSON list (e.g. APART's
    ``noise_modules=[]``), else the string itself."""
    low = str(text).strip().lower()
    if low.startswith("["):
        import json

        try:
            return json.loads(text)
        except ValueError:
            raise ConfigError(f"argument '{name}' looks like a list but is not valid JSON: {text!r}") from None
    if low in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[low]
    for conv in (int, lambda v: parse_number(v, name)):
        try:
            return conv(text)
        except (ValueError, ConfigError):
            pass
    return text


def option(default: Any = None, help: str = "", *, factory: Any = None, flag: str | None = None,
           choices: tuple[str, ...] | None = None, kind: str | None = None, metavar: str | None = None) -> Any:
    """A `TrainConfig` field with what its command-line flag needs (`fastat.train.cli.add_train_arguments` reads it):
    ``help``; ``flag`` (default ``--field-name``); ``choices``; ``kind``: how the flag reads its value — "number" (a
    float or a fraction like 8/255), "floats" (comma-separated), "pairs" (repeatable KEY=VALUE into a dict), "switch"
    (a flag that turns a False field on), "no-switch" (``--no-NAME`` turns a True field off), "optional" (the flag
    alone means "default"); by default the type of the default (int, float, str)."""
    meta = {"help": help, "flag": flag, "choices": choices, "kind": kind, "metavar": metavar}
    return field(default_factory=factory, metadata=meta) if factory is not None else field(default=default,
                                                                                           metadata=meta)


@dataclass
class TrainConfig:
    """Everything a run needs. Each field is declared once, with its flag (`option`); None means "the recipe's"
    (`recipes`: filled in by `validate` or the trainer)."""

    method: str = option("fgsm_rs", "fgsm, fgsm_rs, n_fgsm, zerograd, multigrad, atas, gradalign, apart, pgd, nuat, "
                         "sora, fgsm_pgi")
    dataset: str = option("fashion-mnist", "fashion-mnist (default, embedded), mnist, cifar10, cifar100, svhn, "
                          "imagefolder")
    eps: float | str | None = option(None, "ε in pixel units: 0.2 or 8/255 (default: the data set's customary ε: "
                                     "Fashion-MNIST 0.1, MNIST 0.3, CIFAR-10/100 and SVHN 8/255)", kind="number")
    epochs: int = option(10, "training epochs")
    model: str | None = option(None, "preact18, wrn28-10, wrn34-10, small-cnn (default: preact18 on CUDA, small-cnn on "
                               "the CPU)")
    model_kwargs: dict[str, Any] = option(help="architecture option, repeatable (e.g. --model-kwarg width=64)",
                                          factory=dict, flag="--model-kwarg", kind="pairs", metavar="KEY=VALUE")
    batch_size: int = option(512, "global batch (summed over torchrun ranks)")
    subset: int | None = option(None, "train on the first N training images", kind="int")
    data_root: str | None = option(None, "data folder (Fashion-MNIST defaults to the embedded copy; MNIST, "
                                   "CIFAR-10/100 and SVHN in torchvision's layouts; an image folder)")
    download: bool = option(False, "let torchvision download a missing dataset into --data-root (needs network; never "
                            "done otherwise)", kind="switch")
    lr_schedule: str = option("cyclic", "learning-rate schedule", choices=("cyclic", "piecewise", "multistep",
                                                                           "constant"))
    lr_max: float | None = option(None, "peak learning rate (default: the recipe's for the model at this batch size: "
                                  "0.2 at batch 128 for PreActResNet-18 and WideResNets, 0.1 for the small CNN, "
                                  "scaled down linearly for smaller batches)", kind="float")
    lr_peak: float = option(0.5, "cyclic: fraction of the run at the peak (0.5 as WONG, N-FGSM, APART, ZeroGrad; "
                            "GradAlign 0.4)")
    milestones: tuple[float, ...] = option((0.5, 0.75), "multistep: fractions of the run, comma-separated",
                                           kind="floats")
    momentum: float = option(0.9, "SGD momentum (fixed)")
    weight_decay: float = option(5e-4, "SGD weight decay (APART's official value: 2e-4)")
    pad_mode: str = option("zero", "padding of the random crop (reflect: the ZeroGrad CIFAR-10 loader)",
                           choices=("zero", "reflect"))
    drop_last: bool = option(False, "drop each epoch's last partial batch (as GradAlign's loader)", kind="switch")
    eps_warmup: float | None = option(None, "ramp eps and alpha up linearly from ~0 over the first EPOCHS epochs "
                                      "(default: 5 on SVHN as the N-FGSM and GradAlign recipes, 2 for the small CNN "
                                      "on CIFAR, else 0); helps a model that stays at chance with the full eps from "
                                      "scratch", kind="float", metavar="EPOCHS")
    precision: str | None = option(None, "training precision (default: bf16 on CUDA, fp32 on the CPU)",
                                   choices=PRECISIONS)
    attack_precision: str | None = option(None, "the attacks' forward/backward (default: --precision). fp32 as the "
                                          "official ZeroGrad, N-FGSM and ATAS codes: exact input gradients (no bf16 "
                                          "ties in ZeroGrad's quantile) at the cost of fp32 attack passes",
                                          choices=PRECISIONS)
    device: str | None = option(None, "cpu, cuda or cuda:N (default: cuda when a GPU is available)",
                                metavar="cpu|cuda|cuda:N")
    seed: int = option(0, "seed of the model init, the data order and the attacks' randomness")
    out: str | None = option(None, "run folder (metrics, curves.png, checkpoints)")
    method_kwargs: dict[str, Any] = option(help="any other method hyper-parameter, repeatable (e.g. --hp steps=10)",
                                           factory=dict, flag="--hp", kind="pairs", metavar="KEY=VALUE")
    label_smoothing: float = option(0.0, "label smoothing of the training loss")
    ema: float | None = option(None, "EMA decay of the weights (e.g. 0.999; default: no EMA)", kind="float")
    cuda_graph: bool = option(False, "capture the whole training step in a CUDA graph once per epoch and replay it "
                              "(bf16/fp32; removes launch overhead, which dominates at small batches)", kind="switch")
    compile: str | None = option(None, "torch.compile the model (default, max-autotune or "
                                 "max-autotune-no-cudagraphs); the attacks' forwards, the training forward and their "
                                 "backwards run compiled, GradAlign's double backprop stays eager", kind="optional",
                                 metavar="MODE")
    eval_n: int = option(2000, "test images for the per-epoch PGD evaluation")
    eval_steps: int = option(20, "PGD steps of the per-epoch evaluation (α = ε/4)")
    eval_restarts: int = option(1, "PGD restarts of the per-epoch evaluation")
    co_batch: int = option(256, "test images of the catastrophic-overfitting check")
    co_steps: int = option(10, "PGD steps of the catastrophic-overfitting check")
    co_drop: float = option(0.2, "CO when the check's PGD accuracy falls this much (absolute) below its best")
    pertalign_ratio: float = option(0.5, "--co-check pertalign: CO when the epoch's PertAlign falls below this "
                                    "fraction of its best epoch's (its level depends on the method)")
    co_check: str = option("test", "the CO check: PGD on a fixed test batch vs its best (test), WONG's --early-stop "
                           "check, PGD on the epoch's first training batch in train mode vs the previous epoch (wong; "
                           "WONG uses --co-steps 5), or SORA's PertAlign, the cosine between the attack's and the "
                           "training loss's input gradients, no attack at all (pertalign; single-step methods)",
                           choices=("test", "wong", "pertalign"))
    on_co: str = option("log", "on catastrophic overfitting: log it, stop, or roll back to the last good epoch and "
                        "make the method more conservative (ZeroGrad q + --q-step, α × --alpha-factor, ...)",
                        choices=("log", "stop", "rollback"))
    on_diverge: str = option("stop", "a dead or diverged model (clean accuracy at chance level, non-finite loss): "
                             "stop with one line naming the likely cause and the flags to change, or log it and "
                             "train on", choices=("stop", "log"))
    max_rollbacks: int = option(5, "roll-backs at most (--on-co rollback); then CO is logged and training goes on")
    q_step: float = option(0.1, "a roll-back raises ZeroGrad's q by this much")
    alpha_factor: float = option(0.8, "a roll-back multiplies FGSM-style step sizes by this (GradAlign: divides λ)")
    progress: bool = option(True, "no progress bars (one line per epoch; also the default when stderr is not a "
                            "terminal)", kind="no-switch")
    checkpoint: bool = option(True, "do not write checkpoints every epoch (a roll-back still does)", kind="no-switch")
    plot: bool = option(True, "do not redraw OUT/curves.png after every epoch", kind="no-switch")
    final_eval: str = option("none", "after training: PGD-50-10 (+ AutoAttack) of the last, best-PGD-epoch and EMA "
                             "weights on --final-n test images, to final_eval.json (also on a finished run with "
                             "--resume)", choices=FINAL_EVALS)
    final_n: int = option(1000, "test images for --final-eval")

    @property
    def defaulted(self) -> set[str]:
        """The fields `validate` filled in from the recipe (they were None): a resume refused over one of them names
        the changed default."""
        if "_defaulted" not in self.__dict__:
            self.__dict__["_defaulted"] = set()
        return self.__dict__["_defaulted"]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def resolved_device(self) -> str:
        """The device a run uses: ``device``, else "cuda" when a GPU is available, else "cpu" (the one resolver)."""
        import torch

        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def resolved_precision(self) -> str:
        """The training precision: ``precision``, else bf16 on CUDA and fp32 on the CPU (the one resolver)."""
        return self.precision or ("bf16" if self.resolved_device().startswith("cuda") else "fp32")

    def validate_against_data(self, n_train: int, world_size: int = 1) -> None:
        """The checks that need the training set's size (``n_train``) and the number of processes."""
        if self.subset and self.subset > n_train:
            raise ConfigError(f"argument 'subset' ({self.subset}) is larger than the training set ({n_train})")
        n = self.subset or n_train
        if self.batch_size > n:
            raise ConfigError(f"argument 'batch_size' ({self.batch_size}) is larger than the training set ({n})")
        if self.batch_size < world_size:
            raise ConfigError(f"argument 'batch_size' ({self.batch_size}) must be >= the number of processes "
                              f"({world_size}): it is the global batch, shared by the ranks")

    def validate(self) -> None:
        """Raise ConfigError for anything wrong that can be seen without loading data."""
        from ..data import canonical_name
        from ..methods import METHODS
        from ..methods import canonical_name as canonical_method
        from ..models import MODELS
        from .monitor import CO_ACTIONS, CO_CHECKS, DIVERGE_ACTIONS

        if isinstance(self.eps, str):  # "8/255", as on the command line
            self.eps = parse_number(self.eps, "eps")
        for key in ("alpha", "noise_scale", "step_min", "step_max", "gamma_over_c"):
            if isinstance(self.method_kwargs.get(key), str):
                self.method_kwargs[key] = parse_number(self.method_kwargs[key], key)
        if canonical_method(self.method) not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        try:
            self.dataset = canonical_name(self.dataset)
        except ValueError as exc:
            raise ConfigError(f"unknown dataset {self.dataset!r}: {exc}") from None
        if self.eps is None:
            from .recipes import default_eps

            self.eps = default_eps(self.dataset)
            self.defaulted.add("eps")
        if self.precision is None and (self.device is None or str(self.device).split(":")[0] in ("cpu", "cuda")):
            self.precision = self.resolved_precision()  # (a bad device is named below)
            self.defaulted.add("precision")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and 0 < self.eps <= 1):
            raise ConfigError(f"argument 'eps' must be in (0, 1] (pixel units, e.g. 8/255), got {self.eps!r}")
        for name in ("epochs", "batch_size", "eval_n", "co_batch", "final_n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"argument '{name}' must be a positive int, got {v!r}")
        if self.subset is not None and (not isinstance(self.subset, int) or self.subset < 1):
            raise ConfigError(f"argument 'subset' must be a positive int, got {self.subset!r}")
        if self.model is not None and self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(f"argument 'lr_schedule' must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}")
        if self.lr_max is not None and not (_is_number(self.lr_max) and 0 < self.lr_max < math.inf):
            raise ConfigError(f"argument 'lr_max' must be a finite number > 0, got {self.lr_max!r}")
        if self.eps_warmup is not None and not (_is_number(self.eps_warmup) and 0 <= self.eps_warmup <= self.epochs):
            raise ConfigError(f"argument 'eps_warmup' must be a number of epochs in [0, epochs={self.epochs}], got "
                              f"{self.eps_warmup!r}")
        if not (isinstance(self.momentum, (int, float)) and 0.0 <= self.momentum < 1.0):
            raise ConfigError(f"argument 'momentum' must be in [0, 1), got {self.momentum!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0.0):
            raise ConfigError(f"argument 'weight_decay' must be >= 0, got {self.weight_decay!r}")
        if self.pad_mode not in ("zero", "reflect"):
            raise ConfigError(f"argument 'pad_mode' must be 'zero' or 'reflect', got {self.pad_mode!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"argument 'precision' must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.attack_precision is not None and self.attack_precision not in PRECISIONS:
            raise ConfigError(f"argument 'attack_precision' must be one of {', '.join(PRECISIONS)} (or None: the "
                              f"training precision), got {self.attack_precision!r}")
        if self.co_check not in CO_CHECKS:
            raise ConfigError(f"argument 'co_check' must be one of {', '.join(CO_CHECKS)}, got {self.co_check!r}")
        method_cls = METHODS.get(canonical_method(self.method))
        if self.co_check == "pertalign" and method_cls is not None and not method_cls.keeps_attack_grad:
            raise ConfigError(f"argument 'co_check' = 'pertalign' needs a single-step method (one attack gradient "
                              f"per step); {method_cls.name} has none: use --co-check test")
        if self.cuda_graph and method_cls is not None and method_cls.name == "nuat":
            raise ConfigError("argument 'cuda_graph' does not combine with nuat (its attack loss alternates between "
                              "batches in Python; a capture would keep one of the two)")
        if self.on_co not in CO_ACTIONS:
            raise ConfigError(f"argument 'on_co' must be one of {', '.join(CO_ACTIONS)}, got {self.on_co!r}")
        if self.on_diverge not in DIVERGE_ACTIONS:
            raise ConfigError(f"argument 'on_diverge' must be one of {', '.join(DIVERGE_ACTIONS)}, got "
                              f"{self.on_diverge!r}")
        if self.on_co == "rollback" and self.out is None:
            raise ConfigError("argument 'on_co' = 'rollback' needs 'out' (a run folder for the checkpoint it rolls "
                              "back to)")
        for name, lo, hi in (("co_drop", 0.0, 1.0), ("pertalign_ratio", 0.0, 1.0), ("q_step", 0.0, 1.0),
                             ("alpha_factor", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v <= hi:
                raise ConfigError(f"argument '{name}' must be in ({lo:g}, {hi:g}], got {v!r}")
        if isinstance(self.max_rollbacks, bool) or not isinstance(self.max_rollbacks, int) or self.max_rollbacks < 0:
            raise ConfigError(f"argument 'max_rollbacks' must be an int >= 0, got {self.max_rollbacks!r}")
        if self.device is not None:
            kind, _, index = str(self.device).partition(":")
            if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
                raise ConfigError(f"argument 'device' must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
            if kind == "cuda":
                import torch
                if not torch.cuda.is_available():
                    raise ConfigError(f"argument 'device' is {self.device!r} but no CUDA device is available")
                if index and int(index) >= torch.cuda.device_count():
                    raise ConfigError(f"argument 'device' is {self.device!r} but there are only "
                                      f"{torch.cuda.device_count()} CUDA devices")
        if self.data_root is not None and not self.download and not Path(self.data_root).expanduser().exists():
            raise ConfigError(f"data root {self.data_root!r} does not exist")
        q, a = _number_or_none(self.method_kwargs.get("q"), "q"), _number_or_none(self.method_kwargs.get("alpha"), "alpha")
        if q is not None and not (0.0 <= q <= 1.0):
            raise ConfigError(f"argument 'q' must be in [0, 1], got {q!r}")
        if a is not None and not a > 0:
            raise ConfigError(f"argument 'alpha' must be > 0, got {a!r}")
        if not (isinstance(self.lr_peak, (int, float)) and 0.0 < self.lr_peak < 1.0):
            raise ConfigError(f"argument 'lr_peak' must be in (0, 1) (a fraction of the run), got {self.lr_peak!r}")
        if not self.milestones or not all(isinstance(m, (int, float)) and 0.0 < m < 1.0 for m in self.milestones) \
                or list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"argument 'milestones' must be increasing fractions of the run in (0, 1), got "
                              f"{list(self.milestones)!r}")
        for name, low in (("eval_steps", 0), ("co_steps", 1), ("eval_restarts", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"argument '{name}' must be an int >= {low}, got {v!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"argument 'label_smoothing' must be in [0, 1), got {self.label_smoothing!r}")
        if self.cuda_graph and self.precision == "fp16":
            raise ConfigError("argument 'cuda_graph' needs precision bf16 or fp32 (fp16's grad scaler reads the "
                              "device on the host every step)")
        if self.compile is not None and str(self.method).lower() == "apart" and \
                self.method_kwargs.get("noise_modules") != []:
            import warnings

            warnings.warn("APART's layer-wise noise arms one-shot forward hooks at its noise sites every step: the "
                          "compiled model breaks its graph there and recompiles until torch.compile's recompile "
                          "limit, then runs those parts eagerly, so --compile gains little for it (results are "
                          "unaffected)", stacklevel=3)
        if self.compile is not None:
            if self.compile not in COMPILE_MODES:
                raise ConfigError(f"argument 'compile' must be one of {', '.join(COMPILE_MODES)}, got "
                                  f"{self.compile!r} ('reduce-overhead' is --cuda-graph's job here)")
            if self.cuda_graph:
                raise ConfigError("argument 'compile' cannot be combined with 'cuda_graph' (capture the eager step, "
                                  "or compile the model; not both)")
        if self.cuda_graph and self.resolved_device() == "cpu":
            raise ConfigError(f"argument 'cuda_graph' needs a CUDA device (got device {self.resolved_device()!r})")
        if self.cuda_graph:
            from .. import distributed

            if distributed.env_world_size() > 1:
                raise ConfigError("argument 'cuda_graph' is not supported with several processes (torchrun) yet")
            if self.method_kwargs.get("state_device") == "cpu":
                raise ConfigError("argument 'cuda_graph' does not combine with per-example state in host memory "
                                  "(state_device='cpu'): every step copies the batch's rows through the host")
        if self.final_eval not in FINAL_EVALS:
            raise ConfigError(f"argument 'final_eval' must be one of {', '.join(FINAL_EVALS)}, got {self.final_eval!r}")
        if self.final_eval == "pgd+aa":
            from ..eval import autoattack_available

            if not autoattack_available():
                raise ConfigError("argument 'final_eval' = 'pgd+aa' needs the 'pyautoattack' package (pip install "
                                  "pyautoattack; Python >= 3.10)")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ConfigError(f"argument 'ema' must be a decay in (0, 1), got {self.ema!r}")
