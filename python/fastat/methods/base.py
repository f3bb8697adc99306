"""The `Method` interface every fast adversarial training method implements, and the helpers the attacks share.

A method turns a clean batch into the adversarial batch the model is trained on (`perturb`), may add a regulariser
to the training loss (`extra_loss`, GradAlign), may keep per-example state (ATAS δ/v, APART ω) and learnable scalars
(APART), and reacts to epoch boundaries (`on_epoch_start`). The trainer does not know which method it runs.

Conventions shared by every method (methods.md §0):

* Pixel space: x ∈ [0, 1]; ε and α are absolute (8/255, not 8). Normalisation belongs inside the model.
* The attack gradient is g = ∇ CE_mean(f(x_adv), y): batch-mean cross-entropy on fp32 logits, as the official codes
  (ATAS's c is tuned for the 1/B factor this carries). δ, the step and x_adv are computed in fp32 whatever autocast
  context the method runs in, and x_adv is returned in x's dtype; the model's own passes follow that context (under
  bf16 autocast the input gradient carries bf16-rounded values: ties in ZeroGrad's quantile, some flipped signs; the
  trainer's ``attack_precision="fp32"`` gives the official codes' fp32 attack).
* Attack passes compute input gradients only: parameters are temporarily marked ``requires_grad=False`` and the
  gradient is taken with ``torch.autograd.grad`` (no ``.backward()``, no ``.grad`` written, no weight-gradient GEMMs).
* `attack_bn_mode` ("train" | "eval" | "keep") is the mode the whole model is put in during the attack's forward
  passes (BatchNorm statistics and dropout); the previous mode of every submodule is restored afterwards. Defaults
  follow the official code (§0.2): train for WONG/ZG/GA/NF/APART, eval for ATAS.
* Randomness comes only from torch: ``self.generator`` (a torch.Generator on x's device) or torch's global RNG.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar, NoReturn

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks as checks
from ..batch import BatchInfo
from ..models.normalize import pixel_range_error

__all__ = ["Method", "BN_MODES", "StrengthenLimit", "attack_mode", "frozen_parameters", "input_grad"]

BN_MODES = ("train", "eval", "keep")


# ------------------------------------------------------------------------------------------------- shared helpers


@contextlib.contextmanager
def attack_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Put ``model`` in train ("train") or eval ("eval") mode, or leave it ("keep"); restore every submodule after."""
    if mode == "keep":
        yield
        return
    saved = [(m, m.training) for m in model.modules()]
    model.train(mode == "train")
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Stop parameter gradients being built: clear ``requires_grad`` on the parameters that have it, restore after.

    Autograd then neither saves what weight gradients need nor computes them, so an attack backward costs about
    one input-gradient pass instead of a full backward.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def batch_mean_ce(logits: Tensor, y: Tensor) -> Tensor:
    """CE_mean(logits, y) on fp32 logits (the attack loss of every official code)."""
    return F.cross_entropy(logits.float(), y)


def input_grad(model: nn.Module, x_in: Tensor, y: Tensor, *, create_graph: bool = False) -> Tensor:
    """g = ∇_{x_in} CE_mean(model(x_in), y) for a leaf ``x_in`` that requires grad (nothing else is differentiated)."""
    loss = batch_mean_ce(model(x_in), y)
    (grad,) = torch.autograd.grad(loss, x_in, create_graph=create_graph)
    return grad


def leaf(t: Tensor) -> Tensor:
    """A detached fp32 copy-free leaf of ``t`` that requires grad (the point an attack differentiates at)."""
    return t.detach().float().requires_grad_(True)


def to_unit_box(x: Tensor, delta: Tensor) -> Tensor:
    """x_adv = clip(x + δ, 0, 1), detached (δ is already box-projected; the clip only removes rounding)."""
    return torch.clamp(x + delta, 0, 1).detach()


# -------------------------------------------------------------------------------------------- argument validation


class StrengthenLimit(ValueError):
    """`Method.strengthen` cannot make the method more conservative within its hyper-parameters' range (a CO
    roll-back then stops the run, with this message)."""


def fail(owner: str, exc: type[Exception], msg: str) -> NoReturn:
    checks.fail(f"fastat.methods.{owner}", exc, msg)


def check_positive(owner: str, name: str, value: object) -> float:
    return checks.positive(f"fastat.methods.{owner}", name, value)


def check_range(owner: str, name: str, value: object, lo: float, hi: float) -> float:
    return checks.in_range(f"fastat.methods.{owner}", name, value, lo, hi)


def check_int(owner: str, name: str, value: object, lo: int) -> int:
    return checks.integer(f"fastat.methods.{owner}", name, value, lo)


# ------------------------------------------------------------------------------------------------------ the class


class Method:
    """Base class: hyper-parameters, BN mode, hooks with no-op defaults, and (empty) state.

    The trainer's view, per step::

        x_adv = method.perturb(model, x, y, batch)       # attack passes only compute input gradients
        loss = CE(model(x_adv), y)
        reg = method.extra_loss(model, x, y, x_adv, batch)
        loss = loss if reg is None else loss + reg       # GradAlign: a double-backprop regulariser
        loss.backward(); optimizer.step()                # plus an optimiser over method.parameters() (APART)

    and `on_epoch_start(epoch)` before each epoch (from 1), `state_dict()`/`load_state_dict()` in checkpoints,
    `stats()` for logging, `to(device)` to place state and parameters eagerly (they otherwise follow x's device on
    the first `perturb`).

    * `perturb(model, x, y, batch) -> x_adv`: x's shape and dtype, in [0, 1] and in the method's ball around x,
      detached — except APART, whose x_adv carries a graph to its learnable scalars (only) and must be trained on
      as returned. ``batch`` (`BatchInfo`) may be None for methods without per-example state.
    * Attributes: ``attack_bn_mode``; ``generator`` (None: torch's global RNG); ``freeze_parameters`` (True: clear
      the parameters' requires_grad during attack passes; set False if something, e.g. a DDP wrapper, forbids it —
      autograd.grad still computes no weight gradients then, but the forward saves what they would need).

    Subclasses implement `perturb`, declare their hyper-parameters as annotated class attributes, check them in
    `check_hparams` and call ``super().__init__(eps=..., attack_bn_mode=..., **own_hparams)`` with their defaults
    filled in. The own hyper-parameters become attributes, are listed live by `hparams` and travel in `state_dict` so
    a resumed run continues with them; every change after construction goes through `set_hparams` — `strengthen`
    (a CO roll-back), the trainer's restore of roll-back changes, `load_state_dict` — so the one `check_hparams`
    guards them all.
    """

    name: ClassVar[str] = "method"
    default_attack_bn_mode: ClassVar[str] = "train"
    step_from_zero: ClassVar[bool] = False  # δ = Π_ε(0 + α·sign(g)): any α ≥ ε takes the same step (see strengthen)
    # hyper-parameters that say where this process keeps things, not what they are (ATAS's state_device): listed and
    # saved like the others, but `load_state_dict` leaves the method's own value (a run may resume with another)
    placement_hparams: ClassVar[tuple[str, ...]] = ()
    # hyper-parameters in pixel units, like ε (step sizes): `scaled_budget` scales them with ε (the ε warm-up)
    pixel_hparams: ClassVar[tuple[str, ...]] = ("alpha",)
    # whether `perturb` leaves the input gradient of its attack step in ``attack_grad`` (single-step methods): the
    # PertAlign CO check (`--co-check pertalign`) compares it with the training loss's input gradient
    keeps_attack_grad: ClassVar[bool] = False
    # whether the method itself needs the training loss's input gradient after each step (`observe_train_grad`)
    needs_train_grad: ClassVar[bool] = False

    def __init__(self, *, eps: float, attack_bn_mode: str | None = None, **hparams: Any) -> None:
        self.eps = check_positive(type(self).__name__, "eps", eps)
        mode = self.default_attack_bn_mode if attack_bn_mode is None else attack_bn_mode
        if mode not in BN_MODES:
            fail(type(self).__name__, ValueError, f"argument 'attack_bn_mode' must be one of {BN_MODES}, got {mode!r}")
        self.attack_bn_mode = mode
        self._hparam_names = tuple(hparams)
        for key, value in self.check_hparams(dict(hparams)).items():
            setattr(self, key, value)
        self.generator: torch.Generator | None = None
        self.freeze_parameters = True
        self.attack_grad: Tensor | None = None  # ∇ CE_mean at the attack's start point (`keeps_attack_grad`)
        self._range_checked = False  # the first batch's x is checked to lie in [0, 1] (see `_check_inputs`)

    # ---- hyper-parameters
    def check_hparams(self, hp: dict[str, Any]) -> dict[str, Any]:
        """Check a full set of this method's own hyper-parameters (name -> value; ``self.eps`` is set) and return it
        normalised (floats as floats); TypeError/ValueError naming the argument. The one check of construction and
        of every later change (`set_hparams`). None by default."""
        return hp

    def set_hparams(self, **values: Any) -> None:
        """Change own hyper-parameters, checked together with the others (`check_hparams`); nothing changes when
        the check fails."""
        unknown = sorted(set(values) - set(self._hparam_names))
        if unknown:
            fail(type(self).__name__, KeyError, f"no hyper-parameter {', '.join(map(repr, unknown))}")
        checked = self.check_hparams({**{k: getattr(self, k) for k in self._hparam_names}, **values})
        for key in values:
            setattr(self, key, checked[key])

    # ---- description
    @property
    def hparams(self) -> dict[str, Any]:
        """Current hyper-parameters, for logging: method name, ε, BN mode, then the method's own."""
        out: dict[str, Any] = {"method": self.name, "eps": self.eps, "attack_bn_mode": self.attack_bn_mode}
        out.update({k: getattr(self, k) for k in self._hparam_names})
        return out

    def describe(self) -> str:
        args = ", ".join(f"{k}={_fmt(v)}" for k, v in self.hparams.items() if k != "method")
        return f"{self.name}({args})"

    def __repr__(self) -> str:
        return self.describe()

    # ---- the training-loop hooks
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, batch: BatchInfo | None = None) -> Tensor:
        raise NotImplementedError

    def extra_loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor,
                   batch: BatchInfo | None = None) -> Tensor | None:
        """A regulariser to add to the training loss (GradAlign); None for most methods."""
        return None

    def train_loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor,
                   label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
        """(training loss, the logits its accuracy is counted on) for this batch, before `extra_loss`: by default
        CE_mean(model(x_adv), y) on fp32 logits, and those logits. NuAT trains on the clean loss plus its
        regulariser instead. Runs in the trainer's autocast context, the model in train mode."""
        logits = model(x_adv)
        return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing), logits

    def observe_train_grad(self, grad: Tensor) -> None:
        """Called by the trainer after the training backward, when `needs_train_grad`, with ∇_{x_adv} of the
        training loss (batch-mean form, unscaled, fp32): SORA estimates its linearity coefficient from it and
        ``attack_grad``. No-op by default."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the trainer before each epoch (counted from 1)."""

    def strengthen(self, *, q_step: float = 0.1, alpha_factor: float = 0.8) -> str:
        """Make the method less prone to catastrophic overfitting, after a CO roll-back (`--on-co rollback`, the
        ZeroGrad paper's §6.2 procedure: there q + q_step; here each method turns its own knob). Returns what
        changed, for the log, or "" when the method has nothing to turn.

        Default (FGSM-style methods): α × alpha_factor, starting from the step actually taken: for a method whose
        step starts from δ = 0 and is then clipped to [−ε, ε] (``step_from_zero``), an α above ε acts as ε, so it is
        first brought down to ε (else lowering 2ε to 1.6ε would change nothing)."""
        if getattr(self, "alpha", None) is None or "alpha" not in self._hparam_names:
            return ""
        old = float(self.alpha)
        start = min(old, self.eps) if self.step_from_zero else old
        self.set_hparams(alpha=start * alpha_factor)
        return f"alpha {old:.5g} -> {self.alpha:.5g}"

    @contextlib.contextmanager
    def scaled_budget(self, scale: float) -> Iterator[None]:
        """ε and the pixel-unit hyper-parameters (`pixel_hparams`: α, ATAS's step bounds) × ``scale`` inside the
        block, restored after: the trainer's ε warm-up (``TrainConfig.eps_warmup``), which ramps ε and α together
        from ~0 as N-FGSM's SVHN recipe does (NF `train.py:149-156,206-211`). ``scale`` = 1 changes nothing."""
        scale = float(scale)
        if scale == 1.0:
            yield
            return
        if not 0.0 < scale <= 1.0:
            fail(type(self).__name__, ValueError, f"argument 'scale' must be in (0, 1], got {scale!r}")
        names = ("eps", *(k for k in self.pixel_hparams if k in self._hparam_names))
        saved = {k: getattr(self, k) for k in names if getattr(self, k) is not None}
        for k, v in saved.items():
            setattr(self, k, v * scale)
        try:
            yield
        finally:
            for k, v in saved.items():
                setattr(self, k, v)

    def attach(self, model: nn.Module) -> None:
        """Called by the trainer once the model is built and placed on its device, before the optimisers are made
        (APART adopts the model's noise sites). No-op by default."""

    # ---- state
    def parameters(self) -> list[nn.Parameter]:
        """Learnable method parameters the trainer should optimise (APART); empty by default."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """The method's own hyper-parameters as they are now (a trainer's roll-back may have changed q or α), plus
        its per-example buffers and learnable scalars (tensors, or None before the first `perturb`)."""
        return {"hparams": {k: getattr(self, k) for k in self._hparam_names}, **self._state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned: the saved hyper-parameters (ε, the BN mode and `placement_hparams` are
        not touched) and the buffers/scalars. Unknown or missing keys raise KeyError."""
        owner = type(self).__name__
        expected = {"hparams", *self._state()}
        unknown, missing = set(state) - expected, expected - set(state) - {"hparams"}
        if unknown or missing:
            fail(owner, KeyError, f"state_dict keys do not match: unexpected {sorted(unknown)}, "
                                  f"missing {sorted(missing)}")
        hparams = state.get("hparams", {})
        bad = set(hparams) - set(self._hparam_names)
        if bad:
            fail(owner, KeyError, f"state_dict has hyper-parameters this method does not take: {sorted(bad)}")
        self.set_hparams(**{k: v for k, v in hparams.items() if k not in self.placement_hparams})
        self._load_state({k: v for k, v in state.items() if k != "hparams"})

    def divergence_hint(self) -> str | None:
        """A hyper-parameter of this method that can keep a model at chance, for the line a dead run stops with (the
        trainer names the learning rate and the ε warm-up anyway), or None."""
        return None

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        pass

    def prepare(self, batch: BatchInfo, x: Tensor) -> None:
        """Allocate per-example state for batches like ``batch`` (num_examples, pad) of images like ``x`` (its
        C, H, W, device and dtype; it may have 0 rows) now instead of on the first `perturb`. The trainer calls it
        before training, so several processes can start from rank 0's state. No-op by default."""

    @property
    def host_state(self) -> bool:
        """True when the per-example state lives in host memory and each step copies its rows (ATAS
        ``state_device="cpu"``): such steps sync with the host, so the trainer does not capture them in a CUDA
        graph."""
        return False

    def example_buffers(self) -> list[Tensor]:
        """The per-example state tensors (dim 0 = dataset example) that a training step updates at the rows of
        ``batch.index`` only (ATAS δ and v, APART ω); [] if none or not allocated yet. Several processes (torchrun)
        keep a replica each and exchange the updated rows after every step."""
        return []

    def stats(self) -> dict[str, Tensor]:
        """Per-batch quantities worth logging (device tensors, so reading them is the caller's sync); {} by default."""
        return {}

    def to(self, device: torch.device | str) -> Method:
        """Move per-example state and parameters (in place: parameter objects keep their identity)."""
        return self

    # ---- helpers for subclasses
    @contextlib.contextmanager
    def attacking(self, model: nn.Module) -> Iterator[None]:
        """The attack context: BN mode applied, parameters frozen (if ``freeze_parameters``), grad enabled."""
        with attack_mode(model, self.attack_bn_mode), torch.enable_grad():
            if self.freeze_parameters:
                with frozen_parameters(model):
                    yield
            else:
                yield

    def _check_inputs(self, x: Tensor, y: Tensor, *, image: bool = False) -> None:
        owner = type(self).__name__
        if not isinstance(x, Tensor) or not x.is_floating_point():
            fail(owner, TypeError, f"argument 'x' must be a floating-point tensor, got "
                                   f"{getattr(x, 'dtype', type(x).__name__)}")
        if image and x.dim() != 4:
            fail(owner, ValueError, f"argument 'x' must be (B, C, H, W), got shape {tuple(x.shape)}")
        if x.dim() < 1 or not isinstance(y, Tensor) or tuple(y.shape) != (x.shape[0],):
            fail(owner, ValueError, f"argument 'y' must have shape (B,) = ({x.shape[0] if x.dim() else '?'},), "
                                    f"got {tuple(getattr(y, 'shape', ()))}")
        # Pixel space: x in [0, 1], normalisation inside the model (fra31/auto-attack#13). Checked on the first batch
        # only: the check reads x on the host, and a per-step sync would cost what the fused ops save.
        capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
        if not self._range_checked and not capturing and x.numel():
            problem = pixel_range_error(x)
            if problem:
                fail(owner, ValueError, problem)
            self._range_checked = True

    def _need_batch(self, batch: BatchInfo | None, x: Tensor) -> BatchInfo:
        if batch is None:
            fail(type(self).__name__, ValueError, "argument 'batch' (BatchInfo with dataset indices) is required: "
                                                  "this method keeps per-example state")
        if tuple(batch.index.shape) != (x.shape[0],):
            fail(type(self).__name__, ValueError, f"argument 'batch.index' must have shape ({x.shape[0]},), got "
                                                  f"{tuple(batch.index.shape)}")
        return batch


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)) and len(v) > 4:
        return f"[{len(v)} items]"
    return repr(v)
