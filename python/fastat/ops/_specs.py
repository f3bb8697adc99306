"""OpSpec: per-op sample inputs, bytes moved and exactness, shared by the parity tests and the benchmarks.

A sample is built from (rows, cols, variant): cols is the per-sample size C·H·W, mapped to an image shape so that
channels_last and the ATAS crop windows are meaningful. Variants cover the cases the contracts must hold on: random
data, ties in |g|, all-zero rows, NaN, low-precision gradients, channels_last and non-contiguous layouts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# per-sample size -> (C, H, W)
IMAGE_SHAPES = {1: (1, 1, 1), 3: (3, 1, 1), 784: (1, 28, 28), 3072: (3, 32, 32), 150528: (3, 224, 224)}
VARIANTS = ("random", "ties", "zeros", "nan", "grad_bf16", "grad_fp16", "all_bf16", "channels_last", "noncontig")
EPS = 0.1
ATAS_PAD = 2
_GRAD_DTYPES = {"grad_bf16": torch.bfloat16, "grad_fp16": torch.float16, "all_bf16": torch.bfloat16}
PGI_DECAY = 0.3  # momentum decay of the samples (any value in [0, 1] is valid)
ATAS_KWARGS = dict(eps=EPS, c=0.05, beta=0.5, gamma_over_c=0.2, step_min=0.001, step_max=0.15)


def image_shape(cols: int) -> tuple[int, int, int]:
    if cols in IMAGE_SHAPES:
        return IMAGE_SHAPES[cols]
    side = int(math.isqrt(cols))
    return (1, side, cols // side) if side * (cols // side) == cols else (cols, 1, 1)


@dataclass
class Sample:
    args: tuple
    kwargs: dict
    mutated: tuple[int, ...] = ()  # positions in args that the op writes in place (compared after the call)


def _layout(t: Tensor, variant: str) -> Tensor:
    if variant == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if variant == "noncontig":  # same values, every other element of a twice-as-wide buffer
        wide = torch.empty(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t


def _grad(shape, variant: str, gen: torch.Generator, device, scale: float = 1.0) -> Tensor:
    g = torch.randn(shape, generator=gen, device=device) * scale
    if variant == "ties":  # few distinct magnitudes: many entries tie with the quantile
        g = torch.round(g * 2) / 2
    elif variant == "zeros":  # every other sample has an all-zero gradient, plus scattered exact zeros
        g[::2] = 0
        g[torch.rand(shape, generator=gen, device=device) < 0.2] = 0
    elif variant == "nan":  # a NaN in the first sample only; the other rows must be unaffected
        g.view(shape[0], -1)[0, -1] = float("nan")
    return g.to(_GRAD_DTYPES.get(variant, torch.float32))


def _images(rows: int, cols: int, gen: torch.Generator, device) -> Tensor:
    x = torch.rand((rows,) + image_shape(cols), generator=gen, device=device)
    x.view(rows, -1)[:, :2] = torch.tensor([0.0, 1.0], device=device)[: min(2, x[0].numel())]  # box edges
    return x


def _delta(x: Tensor, gen: torch.Generator) -> Tensor:
    # Poisoned start: mostly inside the ε-ball, some entries outside it (the clamps must act).
    return (torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1) * (1.5 * EPS)


def _state_dtype(variant: str) -> torch.dtype:
    return torch.bfloat16 if variant == "all_bf16" else torch.float32


def sample_zerograd_step(rows, cols, variant, gen, device, q: float = 0.35) -> Sample:
    x = _images(rows, cols, gen, device)
    delta, g = _delta(x, gen), _grad(x.shape, variant, gen, device)
    dt = _state_dtype(variant)
    return Sample((_layout(delta.to(dt), variant), _layout(g, variant), _layout(x.to(dt), variant), EPS, 2 * EPS, q), {})


def sample_pgd_step(rows, cols, variant, gen, device, active: bool = True) -> Sample:
    x = _images(rows, cols, gen, device)
    delta, g = _delta(x, gen), _grad(x.shape, variant, gen, device)
    dt = _state_dtype(variant)
    mask = torch.rand(rows, generator=gen, device=device) < 0.6 if active else None
    return Sample((_layout(delta.to(dt), variant), _layout(g, variant), _layout(x.to(dt), variant), EPS, EPS / 4, mask), {})


def sample_multigrad_step(rows, cols, variant, gen, device, starts: int = 3, threshold: int | None = None) -> Sample:
    x = _images(rows, cols, gen, device)
    base = torch.randn(x.shape, generator=gen, device=device)
    grads = base + 0.7 * torch.randn((starts,) + x.shape, generator=gen, device=device)  # signs mostly agree
    if variant in ("ties", "zeros"):  # exact zeros in some starts: those entries are not unanimous
        grads = torch.where(torch.rand(grads.shape, generator=gen, device=device) < 0.3, 0.0, grads)
    if variant == "zeros":
        grads[:, ::2] = 0
    elif variant == "nan":
        grads[min(1, starts - 1)].view(rows, -1)[0, 0] = float("nan")  # the second start, or the only one
    grads = grads.to(_GRAD_DTYPES.get(variant, torch.float32))
    if variant == "channels_last":  # per-sample NHWC, as S channels_last batches stacked
        grads = grads.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    else:
        grads = _layout(grads, variant)
    return Sample((grads, _layout(x.to(_state_dtype(variant)), variant), EPS, 2 * EPS, threshold), {})


def _atas_state(rows, cols, variant, gen, device):
    x = _images(rows, cols, gen, device)
    c, h, w = x.shape[1:]
    n = rows + 3
    delta_buf = (torch.rand((n, c, h + 2 * ATAS_PAD, w + 2 * ATAS_PAD), generator=gen, device=device) * 2 - 1) * EPS
    index = torch.randperm(n, generator=gen, device=device)[:rows]
    offsets = torch.randint(0, 2 * ATAS_PAD + 1, (rows, 2), generator=gen, device=device)
    offsets[0] = torch.tensor([0, 2 * ATAS_PAD], device=device)  # both extremes of the window
    flips = torch.rand(rows, generator=gen, device=device) < 0.5
    flips[0] = True
    return x, delta_buf.to(_state_dtype(variant)), index, offsets, flips


def sample_atas_gather(rows, cols, variant, gen, device) -> Sample:
    x, delta_buf, index, offsets, flips = _atas_state(rows, cols, variant, gen, device)
    return Sample((delta_buf, index, offsets, flips, _layout(x.to(_state_dtype(variant)), variant)), {})


def sample_atas_step(rows, cols, variant, gen, device, warmup: bool = False) -> Sample:
    x, delta_buf, index, offsets, flips = _atas_state(rows, cols, variant, gen, device)
    # Gradient scale such that sqrt(v)/c is O(1): step sizes land inside [step_min, step_max], not only at the bounds.
    g = _grad(x.shape, variant, gen, device, scale=ATAS_KWARGS["c"] / math.sqrt(x[0].numel()))
    x_adv = (x + (torch.rand(x.shape, generator=gen, device=device) * 2 - 1) * EPS).clamp(0, 1)
    v_buf = torch.rand(delta_buf.shape[0], generator=gen, device=device) * ATAS_KWARGS["c"] ** 2
    dt = _state_dtype(variant)
    args = (delta_buf, v_buf, index, offsets, flips, _layout(g, variant), _layout(x_adv.to(dt), variant),
            _layout(x.to(dt), variant))
    return Sample(args, dict(ATAS_KWARGS, warmup=warmup), mutated=(0, 1))


def sample_pgi_step(rows, cols, variant, gen, device, decay: float = PGI_DECAY) -> Sample:
    x, delta_buf, index, offsets, flips = _atas_state(rows, cols, variant, gen, device)
    g = _grad(x.shape, variant, gen, device)
    grad_l1 = g.float().abs().sum()  # the caller's ‖g‖₁: NaN with the NaN variant, 0 for an all-zero batch
    # Momentum of the size of g/‖g‖₁ entries, so that both terms decide signs of m.
    mom_buf = torch.randn(delta_buf.shape, generator=gen, device=device) / max(1, x.numel())
    if variant == "zeros":  # fresh (zero) momentum for every other example: sign(m) = 0 where g is zero too
        mom_buf[index[::2]] = 0
    x_adv = (x + _delta(x, gen)).clamp(0, 1)  # a start outside the ε-ball in places: both projections act
    dt = _state_dtype(variant)
    args = (delta_buf, mom_buf.to(dt), index, offsets, flips, _layout(g, variant), grad_l1,
            _layout(x_adv.to(dt), variant), _layout(x.to(dt), variant))
    return Sample(args, dict(eps=EPS, decay=decay), mutated=(0, 1))


def sample_uniform_init(rows, cols, variant, gen, device) -> Sample:
    x = _images(rows, cols, gen, device)
    return Sample((_layout(x.to(_state_dtype(variant)), variant), EPS), {})


def sample_sora_step(rows, cols, variant, gen, device, alpha: float = 2 * EPS) -> Sample:
    # SORA's start η is uniform_init's output; a poisoned one (outside the ε-ball in places) is as valid: the op does
    # not project onto the ε-ball, only into the box. α is a 0-dim fp32 device tensor, as SORA passes it.
    x = _images(rows, cols, gen, device)
    delta, g = _delta(x, gen), _grad(x.shape, variant, gen, device)
    dt = _state_dtype(variant)
    a = torch.tensor(alpha, dtype=torch.float32, device=device)
    return Sample((_layout(delta.to(dt), variant), _layout(g, variant), _layout(x.to(dt), variant), a), {})


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, Tensor))


@dataclass(frozen=True)
class OpSpec:
    name: str
    make: Callable[..., Sample]
    # bytes a fused kernel must move: inputs read once, outputs (and written windows) written once
    bytes_moved: Callable[[Sample], int]
    exact: bool = True
    atol: float = 0.0  # for the non-exact outputs only (ATAS: sqrt/divide in the step size)
    params: dict = None  # extra make() keyword values to sweep in tests: {kw: [values]}
    random: bool = False  # draws random numbers: compared under equal generator states


def _atas_step_bytes(s: Sample) -> int:
    delta_buf, v_buf, index, offsets, flips, g, x_adv, x = s.args
    return _nbytes(g, x_adv, x) + 2 * x_adv.numel() * x_adv.element_size() + 2 * index.numel() * 4


def _pgi_step_bytes(s: Sample) -> int:
    delta_buf, mom_buf, index, offsets, flips, g, grad_l1, x_adv, x = s.args
    window = x.numel() * delta_buf.element_size()  # one buffer's B windows
    return _nbytes(g, x_adv, x) + x_adv.numel() * x_adv.element_size() + 3 * window + _nbytes(index, offsets)


SPECS: dict[str, OpSpec] = {
    "zerograd_step": OpSpec("zerograd_step", sample_zerograd_step,
                            lambda s: _nbytes(*s.args[:3]) + s.args[0].numel() * s.args[0].element_size(),
                            params={"q": [0.0, 0.35, 0.7, 1.0]}),
    "multigrad_step": OpSpec("multigrad_step", sample_multigrad_step,
                             lambda s: _nbytes(*s.args[:2]) + s.args[1].numel() * s.args[1].element_size(),
                             params={"threshold": [None, 2]}),
    "atas_gather": OpSpec("atas_gather", sample_atas_gather, lambda s: 3 * _nbytes(s.args[4])),
    "atas_step": OpSpec("atas_step", sample_atas_step, _atas_step_bytes, exact=False, atol=2.5e-7,
                        params={"warmup": [False, True]}),
    "pgi_step": OpSpec("pgi_step", sample_pgi_step, _pgi_step_bytes, params={"decay": [0.0, PGI_DECAY, 1.0]}),
    "pgd_step": OpSpec("pgd_step", sample_pgd_step,
                       lambda s: _nbytes(*s.args[:3]) + s.args[0].numel() * s.args[0].element_size(),
                       params={"active": [True, False]}),
    "uniform_init": OpSpec("uniform_init", sample_uniform_init, lambda s: 2 * _nbytes(s.args[0]), random=True),
    "sora_step": OpSpec("sora_step", sample_sora_step,
                        lambda s: _nbytes(*s.args[:3]) + s.args[0].numel() * s.args[0].element_size(),
                        params={"alpha": [0.0, 2 * EPS]}, random=True),
}
