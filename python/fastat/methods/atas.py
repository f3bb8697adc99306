"""ATAS: adaptive per-example step sizes with a persistent per-example perturbation (HuangZhiChao95/ATAS,
`ATAS.py:83-166`, `adv_attack.py:26-55`, `data_aug.py:47-61`; methods.md §6)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .. import ops
from ..batch import BatchInfo
from ._frame import buffer_shape, crop_params
from ._host_rows import HostPlacement, HostRows, fill_uniform_on
from .base import Method, check_int, check_positive, check_range, fail, input_grad, leaf

__all__ = ["ATAS"]

STATE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ATAS(HostPlacement, Method):
    """ATAS: x_adv₀ = clip(x + flip(crop(δ_buf[i])), 0, 1), one signed step with a per-example size, write-back.

    Per batch (crop offsets and flips from `BatchInfo`, the same as the image's):

    * g = ∇ CE_mean(f(x_adv₀), y) with the model in **eval** mode (`adv_attack.py:26,40`).
    * Warm-up (epochs ≤ ``warmup_epochs``): step ε, v untouched. Then v_i ← β·v_i + (1−β)·‖g_i‖² and
      α_i = clip(γ/c / (1 + √v_i / c), step_min, step_max).
    * x_adv = clip(Π_{‖·−x‖∞≤ε}(x_adv₀ + α_i·sign(g)), 0, 1); x_adv − x is written back un-flipped into the crop
      window of δ_buf[i] (`fastat.ops.atas_step`).
    * `on_epoch_start(e)`: δ_buf ← U(−ε, ε) when e % ``reset_every`` == 0 and e ≠ ``epochs`` (the last epoch,
      `ATAS.py:164-166`); v is never reset.

    State (allocated on the first `perturb`, on x's device): δ_buf (N, C, H+2p, W+2p) fp32 initialised U(−ε, ε)
    (not box-clipped), v_buf (N,) fp32 zeros. Without crop offsets the window is the centre (p, p); without flips
    nothing is flipped.

    Defaults (``ATAS_CIFAR.sh``): c = 0.01, β = 0.5, γ/c = 16/255 (hard-coded in the official code, independent of
    ε), step_min = 4/255, step_max = 14/255, warm-up 5 epochs, reset every 10 epochs. These are absolute values
    tuned for ε = 8/255 and B = 128 (g carries the 1/B factor of the batch mean, so c depends on B).
    ``relative_to_eps=True`` scales them with ε instead (γ/c = 2ε, bounds 0.5ε and 1.75ε, i.e. the official values
    at ε = 8/255) — an option for other ε such as Fashion-MNIST's 0.2, not the official behaviour. Explicit values
    override either. Pass ``epochs`` (the run's total) so the reset skips the last epoch as the official code does.

    ``state_dtype`` ("fp32" default, "fp16", "bf16") stores δ_buf in half precision: half the memory of the largest
    state (CIFAR-10 δ at 40×40×3: 960 MB fp32 → 480 MB), as the official ImageNet code does (fp16). `atas_step`
    still computes in fp32 and rounds the written-back δ once; the trajectory is then close to, not bit-identical
    with, fp32 state. v stays fp32.

    ``state_device="cpu"`` keeps δ_buf and v_buf in host memory (for state that does not fit beside the model on
    the GPU: Tiny-ImageNet's 72×72×3 δ is 6.2 GB in fp32, ImageNet's is far more): each step gathers the batch's rows
    into pinned memory, copies them to the GPU, runs the same ops on them and copies them back asynchronously (the
    host scatter waits until the state is next needed, so the copy overlaps the training step; see
    `fastat.methods._host_rows`). Per step this moves 2 × B rows and costs one sync (the batch's indices), so it
    does not combine with the trainer's ``cuda_graph``. Results equal device-resident state, except the initial and
    reset draws on a GPU, which are made in chunks of rows (on a CPU device the two are bit-identical). Reading
    ``delta_buf``/``v_buf`` waits for the write-back in flight. The placement is this process's choice:
    `load_state_dict` keeps it, so a run saved with either resumes with either.

    Deviations: δ is written back right after the attack instead of after the weight update (the same values: the
    write-back does not depend on the update). The official evaluation on padded 40×40 test images (§6.4) is not a
    property of the method; fastat evaluates at the training resolution. Nor is the model's normalisation: the
    official code normalises CIFAR with ImageNet's μ/σ inside its model (methods.md §0.1); fastat's models use the
    data set's (pass ``mean``/``std`` to `build_model` for the official constants).
    """

    name = "atas"
    keeps_attack_grad = True
    default_attack_bn_mode = "eval"
    placement_hparams = ("state_device",)
    pixel_hparams = ("gamma_over_c", "step_min", "step_max")
    c: float
    beta: float
    gamma_over_c: float
    step_min: float
    step_max: float
    warmup_epochs: int
    reset_every: int | None
    epochs: int | None
    relative_to_eps: bool
    state_dtype: str
    state_device: str | None

    def __init__(self, *, eps: float, c: float = 0.01, beta: float = 0.5, gamma_over_c: float | None = None,
                 step_min: float | None = None, step_max: float | None = None, warmup_epochs: int = 5,
                 reset_every: int | None = 10, epochs: int | None = None, relative_to_eps: bool = False,
                 state_dtype: str = "fp32", state_device: str | None = None,
                 attack_bn_mode: str | None = None) -> None:
        eps = check_positive("ATAS", "eps", eps)
        unit = 2 * eps / 16 if relative_to_eps else 1 / 255  # relative: the /255 constants rescaled by ε/(8/255)
        if isinstance(epochs, int) and isinstance(warmup_epochs, int) and 0 < epochs <= warmup_epochs:
            warnings.warn(f"ATAS: warmup_epochs ({warmup_epochs}) >= epochs ({epochs}): every epoch takes the fixed "
                          f"step eps and the adaptive step sizes never start (pass a smaller warmup_epochs)",
                          stacklevel=2)
        super().__init__(eps=eps, attack_bn_mode=attack_bn_mode, c=c, beta=beta,
                         gamma_over_c=16 * unit if gamma_over_c is None else gamma_over_c,
                         step_min=4 * unit if step_min is None else step_min,
                         step_max=14 * unit if step_max is None else step_max, warmup_epochs=warmup_epochs,
                         reset_every=reset_every, epochs=epochs, relative_to_eps=bool(relative_to_eps),
                         state_dtype=state_dtype, state_device=state_device)
        self._delta: Tensor | None = None
        self._v: Tensor | None = None
        self._rows = HostRows()
        self._device: torch.device | None = None  # where the images (and the kernels) are: host state's fill device
        # the last batch: (its dataset indices, warm-up?, its updated v rows on the device when the state is on the host)
        self._last: tuple[Tensor, bool, Tensor | None] | None = None

    def check_hparams(self, hp: dict) -> dict:
        out = {**hp, **{k: check_positive("ATAS", k, hp[k]) for k in ("gamma_over_c", "step_min", "step_max", "c")}}
        if out["step_min"] > out["step_max"]:
            fail("ATAS", ValueError, f"argument 'step_min' ({out['step_min']}) must be <= 'step_max' "
                                     f"({out['step_max']})")
        out["beta"] = check_range("ATAS", "beta", hp["beta"], 0.0, 1.0)
        out["warmup_epochs"] = check_int("ATAS", "warmup_epochs", hp["warmup_epochs"], 0)
        for key in ("reset_every", "epochs"):
            if hp[key] is not None:
                out[key] = check_int("ATAS", key, hp[key], 1)
        if hp["state_dtype"] not in STATE_DTYPES:
            fail("ATAS", ValueError, f"argument 'state_dtype' must be one of {tuple(STATE_DTYPES)}, got "
                                     f"{hp['state_dtype']!r}")
        self.check_state_device("ATAS", hp["state_device"])
        return out

    @property
    def delta_buf(self) -> Tensor | None:
        """The per-example δ (N, C, H+2p, W+2p), current (a write-back in flight is finished first)."""
        self._rows.flush()
        return self._delta

    @property
    def v_buf(self) -> Tensor | None:
        """The per-example gradient-norm EMA v (N,) fp32, current."""
        self._rows.flush()
        return self._v

    # ---- state
    def _ensure_buffers(self, batch: BatchInfo, x: Tensor) -> None:
        shape = buffer_shape(batch, x)
        self._device = x.device
        home = self._home(x.device)
        if self._delta is None:
            dtype = STATE_DTYPES[self.state_dtype]
            if home == x.device:
                self._delta = self._uniform(torch.empty(shape, dtype=torch.float32, device=x.device)).to(dtype)
            else:
                self._delta = fill_uniform_on(torch.empty(shape, dtype=dtype), x.device, -self.eps, self.eps,
                                              self.generator)
            self._v = torch.zeros(shape[0], dtype=torch.float32, device=home)
        elif tuple(self._delta.shape) != shape:
            fail("ATAS", ValueError, f"the δ buffer has shape {tuple(self._delta.shape)} but this batch needs "
                                     f"{shape} (num_examples, C, H+2·pad, W+2·pad)")
        if self._delta.device != home:
            self.to(x.device)

    def prepare(self, batch: BatchInfo, x: Tensor) -> None:
        self._ensure_buffers(batch, x)

    def example_buffers(self) -> list[Tensor]:
        return [] if self.delta_buf is None else [self.delta_buf, self.v_buf]  # (host state: flushed)

    def _uniform(self, buf: Tensor) -> Tensor:
        return buf.uniform_(-self.eps, self.eps, generator=self.generator)

    def _state(self) -> dict[str, Any]:
        return {"delta_buf": self.delta_buf, "v_buf": self.v_buf}

    def _load_state(self, state: dict[str, Any]) -> None:
        delta_buf, v_buf = state.get("delta_buf"), state.get("v_buf")
        if (delta_buf is None) != (v_buf is None):
            fail("ATAS", ValueError, "state_dict must hold both 'delta_buf' and 'v_buf' or neither")
        if delta_buf is not None and (v_buf.dim() != 1 or v_buf.shape[0] != delta_buf.shape[0]):
            fail("ATAS", ValueError, f"'v_buf' must have shape ({delta_buf.shape[0]},), got {tuple(v_buf.shape)}")
        self._rows.flush()
        self._delta = None if delta_buf is None else delta_buf.detach().to(
            dtype=STATE_DTYPES[self.state_dtype], device=self._home(delta_buf.device)).clone().contiguous()
        self._v = None if v_buf is None else \
            v_buf.detach().to(dtype=torch.float32, device=self._home(v_buf.device)).clone().contiguous()
        self._last = None

    def to(self, device: torch.device | str) -> ATAS:
        """Move the state to ``device`` (host state stays on the host; ``device`` is then where its rows are served
        and its random draws are made)."""
        self._device = torch.device(device)
        home = self._home(self._device)
        if self.delta_buf is not None:
            self._delta = self._delta.to(home).contiguous()
            self._v = self._v.to(home).contiguous()
        return self

    def strengthen(self, *, q_step: float = 0.1, alpha_factor: float = 0.8) -> str:
        """Smaller adaptive steps after a CO roll-back: γ/c, step_min and step_max × alpha_factor (the warm-up
        epochs' step ε is not changed)."""
        old = (self.gamma_over_c, self.step_min, self.step_max)
        self.set_hparams(**{k: v * alpha_factor for k, v in zip(("gamma_over_c", "step_min", "step_max"), old)})
        return (f"gamma_over_c {old[0]:.5g} -> {self.gamma_over_c:.5g}, step_min/max {old[1]:.5g}/{old[2]:.5g} -> "
                f"{self.step_min:.5g}/{self.step_max:.5g}")

    def stats(self) -> dict[str, Tensor]:
        """Mean per-example step size of the last batch (a device tensor; no sync)."""
        steps = self.step_sizes()
        return {} if steps is None else {"step_size_mean": steps.mean()}

    # ---- hooks
    def on_epoch_start(self, epoch: int) -> None:
        reset = self.reset_every is not None and epoch % self.reset_every == 0 and epoch != self.epochs
        if reset and self.delta_buf is not None:
            if self._device is None or self._delta.device == self._device:  # drawn where it lives
                self._uniform(self._delta)
            else:  # host state of an accelerator: drawn there in chunks, as at allocation
                fill_uniform_on(self._delta, self._device, -self.eps, self.eps, self.generator)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, batch: BatchInfo | None = None) -> Tensor:
        self._check_inputs(x, y, image=True)
        batch = self._need_batch(batch, x)
        xf = x.detach().float()
        self._ensure_buffers(batch, xf)
        index, offsets, flips = crop_params(batch, xf)
        delta, v, rows = self.delta_buf, self.v_buf, index
        if self.host_state:  # this batch's rows, on x's device; the ops then address them as 0..B-1
            host_index = self._rows.host_index(batch.index)
            delta, v = self._rows.fetch([self._delta, self._v], host_index, xf.device)
            rows = torch.arange(index.shape[0], device=xf.device)
        x_adv0 = ops.atas_gather(delta, rows, offsets, flips, xf)
        with self.attacking(model):
            grad = input_grad(model, leaf(x_adv0), y)
        self.attack_grad = grad
        if batch.global_batch is not None and batch.global_batch != x.shape[0]:
            # a share of a global batch (torchrun): rescale this rank's batch mean to the global one, so ‖g‖², v and
            # the step sizes are what one process would compute (c is tuned for the 1/B of the batch mean)
            grad = grad * (x.shape[0] / batch.global_batch)
        warmup = batch.epoch <= self.warmup_epochs
        x_adv = ops.atas_step(delta, v, rows, offsets, flips, grad, x_adv0, xf, eps=self.eps,
                              c=self.c, beta=self.beta, gamma_over_c=self.gamma_over_c, step_min=self.step_min,
                              step_max=self.step_max, warmup=warmup)
        if self.host_state:
            self._rows.store([self._delta, self._v], host_index, [delta, v])
        self._last = (index, warmup, v if self.host_state else None)
        return x_adv.detach().to(x.dtype)

    def step_sizes(self) -> Tensor | None:
        """The step each sample of the last batch took, recomputed from its updated v (for logging; call it before
        the next `perturb`)."""
        if self._last is None or self._v is None:
            return None
        index, warmup, v = self._last
        if warmup:
            return torch.full(index.shape, self.eps, dtype=torch.float32, device=index.device)
        if v is None:
            v = self._v[index]
        return torch.clamp(self.gamma_over_c / (1 + torch.sqrt(v) / self.c), self.step_min, self.step_max)
