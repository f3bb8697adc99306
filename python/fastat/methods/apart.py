"""APART: learnable initialisation and step sizes (LiyuanLucasLiu/APART `train.py:97-173`, `models/preresnet.py`,
`adaptive_data_aug.py`; methods.md §7)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..batch import BatchInfo
from ._frame import buffer_shape, crop_params, window_index
from .base import Method, batch_mean_ce, check_positive, fail, leaf

__all__ = ["APART"]


class _GradReverse(torch.autograd.Function):
    """Identity forward, negated gradient: the step-size scalars are trained by gradient *ascent* (`train.py`)."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        return t.view_as(t)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return -grad


def _ascent(p: Tensor) -> Tensor:
    return _GradReverse.apply(p)


def _modules(items: Sequence[Any], what: str) -> list[nn.Module]:
    """``items`` as a list, each checked to be an nn.Module (otherwise a TypeError naming ``what.format(i=i)``)."""
    modules = list(items)
    for i, m in enumerate(modules):
        if not isinstance(m, nn.Module):
            fail("APART", TypeError, f"{what.format(i=i)} must be an nn.Module, got {type(m).__name__}")
    return modules


class APART(Method):
    """APART: δ₀ = Π_ε(α_ω·ω_i), one learnable FGSM step δ = Π_ε(δ₀ + α·sign(g_x)), x_adv = clip(x + δ, 0, 1).

    State: learnable scalars α (step, init 1e-4) and α_ω (init scale, init 1e-4), one scalar α_b (init 0) per module
    in ``noise_modules`` (given, or adopted from the model by `attach`), and a per-example buffer ω (N, C, H+2p,
    W+2p) initialised 1e-3·N(0, 1), cropped and flipped with the image (`BatchInfo` offsets/flips).

    Per batch:

    1. Pass 1 (in ``attack_bn_mode``, train by default; input gradients only): g_x = ∇ CE_mean(f(clip(x+δ₀,0,1)), y)
       at the model input, and g_b at the output of every noise module.
    2. `perturb` returns x_adv **attached to the graph of α and α_ω** (not to x or the model), so the trainer's
       training loss CE(f(x_adv), y) reaches them. The trainer must not detach it. (Called under ``no_grad`` it
       returns a detached x_adv and arms none of the hooks below.) During that training forward,
       each noise module's output gets + α_b·sign(g_b) (a one-shot forward hook, removed after it fires).
    3. In the trainer's backward, a hook on x_adv receives g_x' = ∂L/∂x_adv and updates
       ω_i ← clip(ω_i + α/(α_ω + 1e-7)·sign(g_x'), −1, 1) inside the crop window.
    4. The scalars' ``.grad`` hold **−∂L/∂p** (gradient reversal), so a plain SGD descent step is the official ascent.
       Official optimiser for them (``param_optimizer``): SGD, CyclicLR 0 → 5e-8 → 0 over the run, momentum 0.9,
       weight decay 400; keep them out of the model's optimiser (with torch ≥ 2 the official main SGD skips them).

    Layer-wise noise sites: the official code puts α_b after each PreAct block's bn1-ReLU (8 blocks in PreActResNet-18)
    inside its own model. Here, with ``noise_modules=None`` (the default), `attach(model)` adopts
    ``model.noise_sites()`` when the model has it: fastat's `PreActResNet` returns its blocks' post-bn1-ReLU
    ``nn.Identity`` modules, so the official placement holds out of the box. A model without ``noise_sites`` gets
    no layer-wise noise. An explicit list is used as given (``[]``: no layer-wise noise); the listed modules' outputs
    must not be modified in place afterwards.

    Deviations: pass 1 takes input/activation gradients with autograd.grad instead
    of a full backward whose parameter gradients are thrown away. The crop/flip comes from the loader instead of
    Python ``random``; the grey (0.5) padding of the official loader is the data pipeline's choice, not the method's.
    """

    name = "apart"
    param_optimizer = {"optimizer": "sgd", "lr_max": 5e-8, "lr_schedule": "cyclic", "momentum": 0.9,
                       "weight_decay": 400.0}
    pixel_hparams = ()  # α and α_ω are learned scalars: the ε warm-up scales the ε clamp only
    alpha_init: float
    alpha_omega_init: float
    omega_init_std: float

    def __init__(self, *, eps: float, alpha_init: float = 1e-4, alpha_omega_init: float = 1e-4,
                 omega_init_std: float = 1e-3, noise_modules: Sequence[nn.Module] | None = None,
                 attack_bn_mode: str | None = None) -> None:
        eps = check_positive("APART", "eps", eps)
        self._noise_given = noise_modules is not None  # None: adopt the model's noise sites in `attach`
        modules = _modules(noise_modules or [], "argument 'noise_modules[{i}]'")
        super().__init__(eps=eps, attack_bn_mode=attack_bn_mode, alpha_init=alpha_init,
                         alpha_omega_init=alpha_omega_init, omega_init_std=omega_init_std)
        self.noise_modules = modules
        self.alpha = nn.Parameter(torch.tensor(self.alpha_init))
        self.alpha_omega = nn.Parameter(torch.tensor(self.alpha_omega_init))
        self.alpha_layers = [nn.Parameter(torch.tensor(0.0)) for _ in modules]
        self.omega: Tensor | None = None
        self._noise_handles: list[RemovableHandle] = []
        self._omega_pending = False

    def check_hparams(self, hp: dict) -> dict:
        return {**hp, **{k: check_positive("APART", k, hp[k]) for k in ("alpha_init", "alpha_omega_init",
                                                                        "omega_init_std")}}

    @property
    def hparams(self) -> dict[str, Any]:
        return {**super().hparams, "noise_modules": len(self.noise_modules)}

    def attach(self, model: nn.Module) -> None:
        """Adopt ``model.noise_sites()`` as the noise modules, with one α_b each (init 0, on α's device), unless
        ``noise_modules`` was given to the constructor. Looks through a ``.module`` wrapper (DataParallel/DDP).

        Idempotent: attaching the same sites again changes nothing; a model with as many sites keeps the α_b
        Parameter objects (and their values). Call before building the optimiser over `parameters` and before
        `load_state_dict` (the saved α_b count must match)."""
        if self._noise_given:
            return
        sites = getattr(model, "noise_sites", None)
        if not callable(sites) and isinstance(getattr(model, "module", None), nn.Module):
            sites = getattr(model.module, "noise_sites", None)
        modules = _modules(sites() if callable(sites) else [], "model.noise_sites()[{i}]")
        if len(modules) == len(self.noise_modules) and all(a is b for a, b in zip(modules, self.noise_modules)):
            return
        for h in self._noise_handles:  # armed for the old sites
            h.remove()
        self._noise_handles.clear()
        if len(modules) != len(self.alpha_layers):
            self.alpha_layers = [nn.Parameter(torch.zeros((), dtype=self.alpha.dtype, device=self.alpha.device))
                                 for _ in modules]
        self.noise_modules = modules

    # ---- state
    def parameters(self) -> list[nn.Parameter]:
        return [self.alpha, self.alpha_omega, *self.alpha_layers]

    def prepare(self, batch: BatchInfo, x: Tensor) -> None:
        self._ensure_state(batch, x.float())

    def example_buffers(self) -> list[Tensor]:
        return [] if self.omega is None else [self.omega]

    def _state(self) -> dict[str, Any]:
        layers = torch.stack([p.detach() for p in self.alpha_layers]) if self.alpha_layers else torch.zeros(0)
        return {"omega": self.omega, "alpha": self.alpha.detach(), "alpha_omega": self.alpha_omega.detach(),
                "alpha_layers": layers}

    def _load_state(self, state: dict[str, Any]) -> None:
        layers = state["alpha_layers"]
        if layers.numel() != len(self.alpha_layers):
            fail("APART", ValueError, f"state_dict has {layers.numel()} layer-wise scalars but this method has "
                                      f"{len(self.alpha_layers)} noise_modules (call attach(model) before "
                                      f"loading; noise_modules=[] for a run saved without layer-wise noise)")
        with torch.no_grad():
            self.alpha.copy_(state["alpha"])
            self.alpha_omega.copy_(state["alpha_omega"])
            for p, v in zip(self.alpha_layers, layers):
                p.copy_(v)
        omega = state["omega"]
        self.omega = None if omega is None else omega.detach().float().clone().contiguous()

    def to(self, device: torch.device | str) -> APART:
        """Move ω and the scalars; the Parameter objects stay the same (call before building their optimiser)."""
        for p in self.parameters():
            if p.device != torch.device(device):
                p.data = p.data.to(device)
        if self.omega is not None:
            self.omega = self.omega.to(device).contiguous()
        return self

    def strengthen(self, *, q_step: float = 0.1, alpha_factor: float = 0.8) -> str:
        """Smaller learned steps after a CO roll-back: the scalars α and α_ω × alpha_factor (they keep learning).
        They are state, not hyper-parameters, so each roll-back scales the restored checkpoint's values: repeated
        roll-backs to the same checkpoint do not compound (the hyper-parameter knobs of the other methods do)."""
        old = (float(self.alpha.detach()), float(self.alpha_omega.detach()))
        with torch.no_grad():
            self.alpha.mul_(alpha_factor)
            self.alpha_omega.mul_(alpha_factor)
        return (f"alpha {old[0]:.5g} -> {float(self.alpha.detach()):.5g}, alpha_omega {old[1]:.5g} -> "
                f"{float(self.alpha_omega.detach()):.5g}")

    def stats(self) -> dict[str, Tensor]:
        return {"alpha": self.alpha.detach(), "alpha_omega": self.alpha_omega.detach()}

    # ---- the attack
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, batch: BatchInfo | None = None) -> Tensor:
        self._check_inputs(x, y, image=True)
        batch = self._need_batch(batch, x)
        self._clear_pending()
        xf = x.detach().float()
        self._ensure_state(batch, xf)
        index, offsets, flips = crop_params(batch, xf)
        window = window_index(self.omega, index, offsets, flips, xf.shape[2], xf.shape[3])
        omega = self.omega[window]
        delta0 = torch.clamp(_ascent(self.alpha_omega) * omega, -self.eps, self.eps)

        with self.attacking(model):
            x_in = leaf(torch.clamp(xf + delta0.detach(), 0, 1))
            with self._captured_outputs() as acts:
                loss = batch_mean_ce(model(x_in), y)
            grads = torch.autograd.grad(loss, [x_in, *acts], allow_unused=True)
        g_x = grads[0]
        signs = [torch.zeros_like(a) if g is None else torch.sign(g) for a, g in zip(acts, grads[1:])]

        delta = torch.clamp(delta0 + _ascent(self.alpha) * torch.sign(g_x), -self.eps, self.eps)
        x_adv = torch.clamp(xf + delta, 0, 1)
        if not x_adv.requires_grad:  # called under no_grad (not a training step): no graph, no pass-2 hooks
            return x_adv.detach().to(x.dtype)
        self._install_noise(signs)
        self._install_omega_update(x_adv, omega, window)
        return x_adv.to(x.dtype)

    def _ensure_state(self, batch: BatchInfo, x: Tensor) -> None:
        shape = buffer_shape(batch, x)
        if self.omega is None:
            self.omega = torch.empty(shape, dtype=torch.float32, device=x.device)
            self.omega.normal_(0.0, self.omega_init_std, generator=self.generator)
        elif tuple(self.omega.shape) != shape:
            fail("APART", ValueError, f"the ω buffer has shape {tuple(self.omega.shape)} but this batch needs {shape}")
        if self.omega.device != x.device or self.alpha.device != x.device:
            self.to(x.device)

    @contextmanager
    def _captured_outputs(self) -> Iterator[list[Tensor]]:
        """Record each noise module's output during one forward (the activations whose gradients give g_b)."""
        acts: list[Tensor | None] = [None] * len(self.noise_modules)

        def recorder(i: int):
            def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
                acts[i] = output
            return hook

        handles = [m.register_forward_hook(recorder(i)) for i, m in enumerate(self.noise_modules)]
        out: list[Tensor] = []
        try:
            yield out
        finally:
            for h in handles:
                h.remove()
        for i, a in enumerate(acts):
            if a is None:
                fail("APART", RuntimeError, f"noise_modules[{i}] did not run in the model's forward pass")
            out.append(a)

    def _install_noise(self, signs: list[Tensor]) -> None:
        """One-shot forward hooks: the next forward of module b (the training pass) adds α_b·sign(g_b) to its output."""
        for module, alpha_b, sign_b in zip(self.noise_modules, self.alpha_layers, signs):
            holder: list[RemovableHandle] = []

            def hook(mod: nn.Module, inputs: Any, output: Tensor, alpha_b=alpha_b, sign_b=sign_b, holder=holder):
                if output.shape != sign_b.shape:  # some other forward (another batch size): leave it alone
                    return None
                holder[0].remove()
                return output + (_ascent(alpha_b) * sign_b).to(output.dtype)

            holder.append(module.register_forward_hook(hook))
            self._noise_handles.append(holder[0])

    def _install_omega_update(self, x_adv: Tensor, omega: Tensor, window: tuple[Tensor, ...]) -> None:
        """ω_i ← clip(ω_i + α/(α_ω + 1e-7)·sign(∂L/∂x_adv), −1, 1) when the trainer's backward reaches x_adv."""
        self._omega_pending = True

        def hook(grad: Tensor) -> None:
            with torch.no_grad():
                ratio = self.alpha.detach() / (self.alpha_omega.detach() + 1e-7)
                self.omega[window] = torch.clamp(omega + ratio * torch.sign(grad.float()), -1, 1)
            self._omega_pending = False

        x_adv.register_hook(hook)

    def _clear_pending(self) -> None:
        for h in self._noise_handles:
            h.remove()
        self._noise_handles.clear()
        if self._omega_pending:
            warnings.warn("APART: the training backward of the previous batch did not reach x_adv, so ω and the "
                          "step sizes were not updated; the trainer must not detach APART's x_adv", stacklevel=3)
            self._omega_pending = False
