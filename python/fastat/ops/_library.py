"""Defines the `fastat::` ops from `_schemas.SCHEMAS` and registers their fakes.

This runs on `import fastat.ops`, before and independently of the compiled extension, so the ops and their fakes exist
(for torch.compile, opcheck and export) even when `fastat._C` was not built; `_C` only adds CPU/CUDA implementations
(`TORCH_LIBRARY_IMPL(fastat, CPU|CUDA, m)`). `register_fakes` is reused for `fastat_triton::` by fastat_kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _validate
from ._schemas import SCHEMAS

NAMESPACE = "fastat"
LIB = torch.library.Library(NAMESPACE, "FRAGMENT")
for _schema in SCHEMAS.values():
    LIB.define(_schema)


def zerograd_step_fake(delta: Tensor, grad: Tensor, x: Tensor, eps: float, alpha: float, q: float) -> Tensor:
    _validate.check_zerograd_step(delta, grad, x, eps, alpha, q)
    return torch.empty_like(delta)


def multigrad_step_fake(grads: Tensor, x: Tensor, eps: float, alpha: float, threshold: int | None = None) -> Tensor:
    _validate.check_multigrad_step(grads, x, eps, alpha, threshold)
    return torch.empty_like(x)


def atas_gather_fake(delta_buf: Tensor, index: Tensor, offsets: Tensor, flips: Tensor, x: Tensor) -> Tensor:
    _validate.check_atas_gather(delta_buf, index, offsets, flips, x)
    return torch.empty_like(x)


def atas_step_fake(delta_buf: Tensor, v_buf: Tensor, index: Tensor, offsets: Tensor, flips: Tensor, grad: Tensor,
                   x_adv: Tensor, x: Tensor, *, eps: float, c: float, beta: float, gamma_over_c: float,
                   step_min: float, step_max: float, warmup: bool) -> Tensor:
    _validate.check_atas_step(delta_buf, v_buf, index, offsets, flips, grad, x_adv, x, eps=eps, c=c, beta=beta,
                              gamma_over_c=gamma_over_c, step_min=step_min, step_max=step_max, warmup=warmup)
    return torch.empty_like(x_adv)


def pgi_step_fake(delta_buf: Tensor, mom_buf: Tensor, index: Tensor, offsets: Tensor, flips: Tensor, grad: Tensor,
                  grad_l1: Tensor, x_adv: Tensor, x: Tensor, *, eps: float, decay: float) -> Tensor:
    _validate.check_pgi_step(delta_buf, mom_buf, index, offsets, flips, grad, grad_l1, x_adv, x, eps=eps, decay=decay)
    return torch.empty_like(x_adv)


def pgd_step_fake(delta: Tensor, grad: Tensor, x: Tensor, eps: float, alpha: float, active: Tensor | None = None) -> Tensor:
    _validate.check_pgd_step(delta, grad, x, eps, alpha, active)
    return torch.empty_like(delta)


def uniform_init_fake(x: Tensor, eps: float, *, generator: torch.Generator | None = None) -> Tensor:
    _validate.check_uniform_init(x, eps, generator=generator)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def sora_step_fake(delta: Tensor, grad: Tensor, x: Tensor, alpha: Tensor, *,
                   generator: torch.Generator | None = None) -> Tensor:
    _validate.check_sora_step(delta, grad, x, alpha, generator=generator)
    return torch.empty(delta.shape, dtype=delta.dtype, device=delta.device)


FAKES = {
    "zerograd_step": zerograd_step_fake,
    "multigrad_step": multigrad_step_fake,
    "atas_gather": atas_gather_fake,
    "atas_step": atas_step_fake,
    "pgi_step": pgi_step_fake,
    "pgd_step": pgd_step_fake,
    "uniform_init": uniform_init_fake,
    "sora_step": sora_step_fake,
}


def register_fakes(namespace: str, lib: torch.library.Library, names=None) -> None:
    """Register the fake of each op in ``names`` (default: all) for ``namespace::<op>``."""
    for name in names if names is not None else FAKES:
        torch.library.register_fake(f"{namespace}::{name}", FAKES[name], lib=lib)


register_fakes(NAMESPACE, LIB)
