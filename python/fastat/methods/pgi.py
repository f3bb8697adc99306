"""FGSM-PGI: prior-guided initialisation from a per-example buffer of past perturbations, with a momentum of the
L1-normalised gradient and a consistency term (Jia et al., ECCV 2022; as the FastAT Benchmark runs it:
fzjcdt/FastAT_Benchmark `fast_at/fgsm_pgi.py`, `configs/cifar10/fgsm_pgi.yaml`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed as dist_
from .. import ops
from ..batch import BatchInfo
from ._frame import buffer_shape, crop_params
from ._host_rows import HostPlacement, HostRows, fill_uniform_on
from .base import Method, attack_mode, batch_mean_ce, check_int, check_positive, check_range, fail, leaf

__all__ = ["FGSMPGI"]


class FGSMPGI(HostPlacement, Method):
    """FGSM-PGI: start from the stored prior, x₀ = clip(x + flip(crop(δ_buf[i])), 0, 1); one FGSM step of size ε
    from it; the next prior from the momentum; a consistency term in the training loss.

    Per batch (crop offsets and flips from `BatchInfo`, the same as the image's; `fastat.ops.pgi_step`):

    * g = ∇ CE_mean(f(x₀), y), the model in train mode, its forward kept for the consistency term.
    * m ← g / ‖g‖₁ + μ·m_buf[i] (‖g‖₁ over the whole batch, as `torch.norm(x_grad, p=1)`, `fgsm_pgi.py:95-96`).
    * x_adv = clip(Π_ε(x₀ + ε·sign(g)), 0, 1); the next prior Π_box(Π_ε(δ₀ + ε·sign(m))) and m are written back,
      un-flipped, into the crop windows of δ_buf and m_buf (`fgsm_pgi.py:98-104`, `118-119`).
    * Training loss (`train_loss`): CE(f(x_adv), y) + λ·MSE(f(x_adv), f(x₀)), the gradient reaching the weights
      through both forwards (`fgsm_pgi.py:107`).
    * `on_epoch_start(e)`: δ_buf ← ±ε (ε·sign of a uniform draw) and m_buf ← 0 when (e − 1) % ``epochs_reset`` ==
      0, i.e. at the first epoch and every ``epochs_reset`` after (`fgsm_pgi.py:78-81`, epochs counted from 0 there).

    State (allocated at the first `perturb` or by `prepare`, on x's device): δ_buf and m_buf (N, C, H+2p, W+2p)
    fp32 — twice ATAS's δ, the method's memory cost (FAB: 2.54 GB on CIFAR-10 against FGSM-RS's ~1.6).
    ``state_device="cpu"`` keeps both in host memory and moves only the batch's rows each step, as ATAS's option
    does (`fastat.methods._host_rows`; one sync per step, so not under ``cuda_graph``). Several processes
    (torchrun) exchange the rows a step changed, as for ATAS (`example_buffers`).

    Defaults (`configs/cifar10/fgsm_pgi.yaml`): μ (``decay``) 0.3, λ (``lam``) 10, ``epochs_reset`` 40. The
    benchmark's recipe adds label smoothing 0.4 and a per-step weight average τ = 0.9995 (`--label-smoothing 0.4
    --ema 0.9995`). Deviations: the attack loss is the plain batch-mean cross-entropy (the benchmark's criterion
    carries its label smoothing into the attack; only the gradient's sign and its L1-normalised form are used);
    the buffers live in the padded frame and follow crops and flips (the benchmark indexes them by example and
    ignores the augmentation, so its prior lands on another crop of the image); the attack backward builds no
    weight gradients (the benchmark's is discarded by ``opt.zero_grad()``).
    """

    name = "fgsm_pgi"
    keeps_attack_grad = True
    placement_hparams = ("state_device",)
    decay: float
    lam: float
    epochs_reset: int
    state_device: str | None

    def __init__(self, *, eps: float, decay: float = 0.3, lam: float = 10.0, epochs_reset: int = 40,
                 state_device: str | None = None, attack_bn_mode: str | None = None) -> None:
        eps = check_positive("FGSMPGI", "eps", eps)
        super().__init__(eps=eps, attack_bn_mode=attack_bn_mode, decay=decay, lam=lam, epochs_reset=epochs_reset,
                         state_device=state_device)
        self._delta: Tensor | None = None
        self._mom: Tensor | None = None
        self._rows = HostRows()
        self._device: torch.device | None = None  # where the kernels run (host state: where the draws are made)
        self._logits0: Tensor | None = None  # f(x₀) of the last perturb, with its graph to the weights

    def check_hparams(self, hp: dict) -> dict:
        lam = hp["lam"]
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
            fail("FGSMPGI", ValueError, f"argument 'lam' must be a number >= 0, got {lam!r}")
        self.check_state_device("FGSMPGI", hp["state_device"])
        return {**hp, "decay": check_range("FGSMPGI", "decay", hp["decay"], 0.0, 1.0), "lam": float(lam),
                "epochs_reset": check_int("FGSMPGI", "epochs_reset", hp["epochs_reset"], 1)}

    # ---- state
    @property
    def delta_buf(self) -> Tensor | None:
        """The per-example prior δ (N, C, H+2p, W+2p), current (a host write-back in flight is finished first)."""
        self._rows.flush()
        return self._delta

    @property
    def mom_buf(self) -> Tensor | None:
        """The per-example momentum m (N, C, H+2p, W+2p), current."""
        self._rows.flush()
        return self._mom

    def _draw(self) -> None:
        """δ_buf ← ε·sign(U(−ε, ε)) (±ε with equal odds, drawn on the kernels' device), m_buf ← 0."""
        delta = self.delta_buf
        if self._device is None or delta.device == self._device:
            delta.uniform_(-self.eps, self.eps, generator=self.generator)
        else:  # host state of an accelerator: drawn there in chunks of rows, as ATAS's
            fill_uniform_on(delta, self._device, -self.eps, self.eps, self.generator)
        torch.sign(delta, out=delta).mul_(self.eps)
        self._mom.zero_()

    def _ensure_buffers(self, batch: BatchInfo, x: Tensor) -> None:
        shape = buffer_shape(batch, x)
        self._device = x.device
        home = self._home(x.device)
        if self._delta is None:
            self._delta = torch.empty(shape, dtype=torch.float32, device=home)
            self._mom = torch.empty(shape, dtype=torch.float32, device=home)
            self._draw()
        elif tuple(self._delta.shape) != shape:
            fail("FGSMPGI", ValueError, f"the prior buffer has shape {tuple(self._delta.shape)} but this batch "
                                        f"needs {shape} (num_examples, C, H+2·pad, W+2·pad)")
        elif self._delta.device != home:
            self.to(x.device)

    def prepare(self, batch: BatchInfo, x: Tensor) -> None:
        self._ensure_buffers(batch, x)

    def example_buffers(self) -> list[Tensor]:
        return [] if self.delta_buf is None else [self.delta_buf, self.mom_buf]

    def _state(self) -> dict[str, Any]:
        return {"delta_buf": self.delta_buf, "mom_buf": self.mom_buf}

    def _load_state(self, state: dict[str, Any]) -> None:
        delta, mom = state.get("delta_buf"), state.get("mom_buf")
        if (delta is None) != (mom is None) or (delta is not None and delta.shape != mom.shape):
            fail("FGSMPGI", ValueError, "state_dict must hold 'delta_buf' and 'mom_buf' of one shape, or neither")
        self._rows.flush()
        self._delta = None if delta is None else \
            delta.detach().to(dtype=torch.float32, device=self._home(delta.device)).clone().contiguous()
        self._mom = None if mom is None else \
            mom.detach().to(dtype=torch.float32, device=self._home(mom.device)).clone().contiguous()
        self._logits0 = None

    def to(self, device: torch.device | str) -> FGSMPGI:
        """Move the state to ``device`` (host state stays on the host; ``device`` is then where its rows are
        served and its draws made)."""
        self._device = torch.device(device)
        home = self._home(self._device)
        if self.delta_buf is not None:
            self._delta = self._delta.to(home).contiguous()
            self._mom = self._mom.to(home).contiguous()
        return self

    def on_epoch_start(self, epoch: int) -> None:
        if self.delta_buf is not None and (epoch - 1) % self.epochs_reset == 0 and epoch > 1:
            self._draw()  # (epoch 1's draw is the allocation's)

    def divergence_hint(self) -> str | None:
        """λ is tuned at ε = 8/255; on Fashion-MNIST at ε = 0.25 (small CNN, lr 0.05, 5000 images, no warm-up) λ = 10
        kept the model at chance for 3 seeds (the CO atlas) while λ = 0 trained (2026-12-07, CPU): the consistency
        term between two inputs up to 2ε apart outweighs the cross-entropy."""
        return None if self.lam == 0 else f"the consistency weight λ = {self.lam:g} (--hp lam={self.lam / 10:g})"

    def strengthen(self, *, q_step: float = 0.1, alpha_factor: float = 0.8) -> str:
        """After a CO roll-back: a stronger consistency term, λ / alpha_factor (as GradAlign's λ); the step is ε by
        construction (the attack's and the prior's alike), so there is no step size to shrink."""
        if self.lam == 0:
            return ""
        old = self.lam
        self.set_hparams(lam=old / alpha_factor)
        return f"lam {old:.5g} -> {self.lam:.5g}"

    # ---- the step
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, batch: BatchInfo | None = None) -> Tensor:
        self._check_inputs(x, y, image=True)
        batch = self._need_batch(batch, x)
        xf = x.detach().float()
        self._ensure_buffers(batch, xf)
        index, offsets, flips = crop_params(batch, xf)
        delta, mom, rows = self._delta, self._mom, index
        if self.host_state:  # this batch's rows, on x's device; the ops then address them as 0..B-1
            host_index = self._rows.host_index(batch.index)
            delta, mom = self._rows.fetch([self._delta, self._mom], host_index, xf.device)
            rows = torch.arange(index.shape[0], device=xf.device)
        x0 = ops.atas_gather(delta, rows, offsets, flips, xf)
        # The consistency term trains through f(x₀): this forward keeps its graph to the weights (no frozen
        # parameters), and the input gradient is taken without releasing it.
        keep = torch.is_grad_enabled() and self.lam > 0  # (under no_grad nothing will train on it)
        with attack_mode(model, self.attack_bn_mode), torch.enable_grad():
            x0_in = leaf(x0)
            logits0 = model(x0_in)
            (grad,) = torch.autograd.grad(batch_mean_ce(logits0, y), x0_in, retain_graph=keep)
        self._logits0 = logits0 if keep else None
        self.attack_grad = grad
        x_adv = ops.pgi_step(delta, mom, rows, offsets, flips, grad, self._batch_l1(grad), x0, xf, eps=self.eps,
                             decay=self.decay)
        if self.host_state:
            self._rows.store([self._delta, self._mom], host_index, [delta, mom])
        return x_adv.detach().to(x.dtype)

    @staticmethod
    def _batch_l1(grad: Tensor) -> Tensor:
        """‖g‖₁ of the whole batch, in the units of this process's g. Under torchrun each rank holds a share of the
        global batch and its g carries 1/B_rank: Σ|B_rank·g| is summed over the ranks and brought back to this
        rank's units, so the momentum is what one process computes."""
        l1 = grad.float().abs().sum()
        world = dist_.current()
        if world.enabled:
            b = float(grad.shape[0])
            l1 = dist_.all_reduce_sum((l1 * b).reshape(1))[0] / b
        return l1

    def train_loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor,
                   label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
        """CE(f(x_adv), y) + λ·MSE(f(x_adv), f(x₀)) over the (B, K) logits, f(x₀) from this batch's `perturb`."""
        logits = model(x_adv)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        if self.lam > 0:
            if self._logits0 is None or self._logits0.shape != logits.shape:
                fail("FGSMPGI", RuntimeError, "train_loss needs the logits of this batch's perturb() (with their "
                                              "graph): call perturb(model, x, y, batch) first, with grad enabled")
            loss = loss + self.lam * F.mse_loss(logits.float(), self._logits0.float())
        self._logits0 = None
        return loss, logits
