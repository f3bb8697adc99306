"""Robustness diagnostics users ask for when studying catastrophic overfitting (CO).

- `gradient_alignment`: E_i[cos(∇ℓ_i(x), ∇ℓ_i(x + η))], η ~ U(−ε, ε) not clipped to the box (GradAlign Eq. 5,
  GA train.py): collapses towards 0 when CO sets in. Samples with a zero gradient at either point are skipped (GA).
- `fgsm_pgd_loss_gap`: mean CE under PGD minus mean CE under FGSM — the perturbation-deterioration measure of the APART
  paper; it jumps when FGSM stops finding the loss maximum.
- `sign_change_fraction`: the fraction of FGSM perturbation signs sign(∇ℓ) that differ between two checkpoints at the
  same points (ZeroGrad Fig. 4).
- `loss_surface`: CE on the plane x + a·ε·sign(∇ℓ(x)) + b·ε·r (r a random ±1 direction), saved as a PNG.

All run the models in eval mode (modes restored), use input gradients only and seeded torch generators.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ._common import (PRECISIONS, check_choice, check_inputs, check_int, check_positive, eval_mode, input_gradient,
                      logits_of, model_device)

__all__ = ["gradient_alignment", "fgsm_pgd_loss_gap", "sign_change_fraction", "loss_surface", "LossSurface"]


def _prepare(fn: str, model: nn.Module, x: Tensor, y: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    check_inputs(fn, x, y)
    check_positive(fn, "eps", eps)
    dev = model_device(model)
    return x.to(dev, torch.float32), y.to(dev, torch.int64)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def _chunks(n: int, batch_size: int | None):
    step = n if batch_size is None else batch_size
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def gradient_alignment(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, seed: int = 0,
                       batch_size: int | None = None, precision: str = "fp32") -> float:
    """E_i[cos(∇_x ℓ_i(x), ∇_x ℓ_i(x + η_i))] with η ~ U(−ε, ε) per element (no box clip), over samples whose two
    gradients are both non-zero; NaN if there are none (as GA's empty mean)."""
    fn = "gradient_alignment"
    x, y = _prepare(fn, model, x, y, eps)
    check_choice(fn, "precision", precision, PRECISIONS)
    gen = _generator(x.device, seed)
    cos_sum, count = 0.0, 0
    with eval_mode(model):
        for sl in _chunks(x.shape[0], batch_size):
            xb, yb = x[sl], y[sl]
            eta = torch.empty_like(xb).uniform_(-eps, eps, generator=gen)
            g1 = input_gradient(model, xb, yb, precision)[0].flatten(1)
            g2 = input_gradient(model, xb + eta, yb, precision)[0].flatten(1)
            n1, n2 = g1.norm(dim=1), g2.norm(dim=1)
            keep = (n1 != 0) & (n2 != 0)
            cos = (g1[keep] / n1[keep, None] * (g2[keep] / n2[keep, None])).sum(1)
            cos_sum += float(cos.sum())
            count += int(keep.sum())
    return cos_sum / count if count else float("nan")


def fgsm_pgd_loss_gap(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, fgsm_alpha: float | None = None,
                      fgsm_init: str = "zero", pgd_alpha: float | None = None, pgd_steps: int = 10, seed: int = 0,
                      batch_size: int | None = None, precision: str = "fp32") -> dict[str, float]:
    """Mean CE and accuracy at the FGSM point and at a PGD point, and gap = pgd_loss − fgsm_loss.

    FGSM: δ = Π_box(Π_ε(δ₀ + α·sign(∇ℓ(x + δ₀)))) with δ₀ = 0 (``fgsm_init="zero"``, α = ε by default) or
    δ₀ = Π_box(U(−ε, ε)) ("random", FGSM-RS; pass α = 1.25ε for WONG's setting). PGD: random start, ``pgd_steps``
    steps of α = ε/4 (default), no early stop.
    """
    fn = "fgsm_pgd_loss_gap"
    x, y = _prepare(fn, model, x, y, eps)
    check_choice(fn, "fgsm_init", fgsm_init, ("zero", "random"))
    check_choice(fn, "precision", precision, PRECISIONS)
    check_int(fn, "pgd_steps", pgd_steps, 1)
    fgsm_alpha = eps if fgsm_alpha is None else fgsm_alpha
    pgd_alpha = eps / 4 if pgd_alpha is None else pgd_alpha
    check_positive(fn, "fgsm_alpha", fgsm_alpha)
    check_positive(fn, "pgd_alpha", pgd_alpha)
    gen = _generator(x.device, seed)
    sums = {"fgsm_loss": 0.0, "pgd_loss": 0.0, "fgsm_acc": 0.0, "pgd_acc": 0.0}
    with eval_mode(model):
        for sl in _chunks(x.shape[0], batch_size):
            xb, yb = x[sl], y[sl]
            d = ops.uniform_init(xb, eps, generator=gen) if fgsm_init == "random" else torch.zeros_like(xb)
            g = input_gradient(model, xb + d, yb, precision)[0]
            d = ops.pgd_step(d, g, xb, eps, fgsm_alpha)
            _accumulate(sums, "fgsm", model, xb + d, yb, precision)
            d = ops.uniform_init(xb, eps, generator=gen)
            for _ in range(pgd_steps):
                g = input_gradient(model, xb + d, yb, precision)[0]
                d = ops.pgd_step(d, g, xb, eps, pgd_alpha)
            _accumulate(sums, "pgd", model, xb + d, yb, precision)
    out = {k: v / x.shape[0] for k, v in sums.items()}
    out["gap"] = out["pgd_loss"] - out["fgsm_loss"]
    return out


@torch.no_grad()
def _accumulate(sums: dict[str, float], key: str, model: nn.Module, xa: Tensor, y: Tensor, precision: str) -> None:
    logits = logits_of(model, xa, precision)
    sums[f"{key}_loss"] += float(F.cross_entropy(logits, y, reduction="sum"))
    sums[f"{key}_acc"] += float((logits.argmax(1) == y).sum())


def sign_change_fraction(model_a: nn.Module, model_b: nn.Module, x: Tensor, y: Tensor, eps: float, *,
                         init: str = "zero", seed: int = 0, batch_size: int | None = None) -> float:
    """Fraction of elements where sign(∇_x ℓ) differs between ``model_a`` and ``model_b`` (both on the same device),
    taken at x (``init="zero"``) or at the same random start x + Π_box(U(−ε, ε)) for both ("random")."""
    fn = "sign_change_fraction"
    x, y = _prepare(fn, model_a, x, y, eps)
    check_choice(fn, "init", init, ("zero", "random"))
    gen = _generator(x.device, seed)
    changed, total = 0, 0
    with eval_mode(model_a, model_b):
        for sl in _chunks(x.shape[0], batch_size):
            xb, yb = x[sl], y[sl]
            if init == "random":
                xb = xb + ops.uniform_init(xb, eps, generator=gen)
            sa = torch.sign(input_gradient(model_a, xb, yb)[0])
            sb = torch.sign(input_gradient(model_b, xb, yb)[0])
            changed += int((sa != sb).sum())
            total += sa.numel()
    return changed / total


@dataclass
class LossSurface:
    """CE (averaged over the given samples) on a grid: ``loss[i, j]`` at a = ``coords[i]`` along the FGSM direction
    and b = ``coords[j]`` along the random direction, both in units of ε; ``path`` is the PNG written, if any."""

    coords: Tensor
    loss: Tensor
    eps: float
    path: str | None = None


def loss_surface(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, points: int = 21, extent: float = 1.0,
                 seed: int = 0, path: str | os.PathLike | None = None, title: str | None = None) -> LossSurface:
    """CE of x + a·ε·sign(∇ℓ(x)) + b·ε·r, clipped to [0, 1], for a, b in [−extent, extent] (``points`` each), with r a
    random ±1 direction; saved as a filled-contour PNG when ``path`` is given (matplotlib, Agg canvas)."""
    fn = "loss_surface"
    x, y = _prepare(fn, model, x, y, eps)
    check_int(fn, "points", points, 2)
    check_positive(fn, "extent", extent)
    gen = _generator(x.device, seed)
    coords = torch.linspace(-extent, extent, points)
    grid = torch.empty(points, points)
    with eval_mode(model):
        s_fgsm = torch.sign(input_gradient(model, x, y)[0])
        s_rand = torch.randint(0, 2, x.shape, generator=gen, device=x.device).float() * 2 - 1
        b = coords.to(x.device).view(points, *([1] * x.dim()))
        with torch.no_grad():
            for i, a in enumerate(coords.tolist()):  # one forward per grid row: all b values side by side
                xa = (x + eps * (a * s_fgsm + b * s_rand)).clamp(0, 1).flatten(0, 1)
                ce = F.cross_entropy(model(xa).float(), y.repeat(points), reduction="none")
                grid[i] = ce.view(points, -1).mean(1).cpu()
    written = None
    if path is not None:
        written = str(_save_surface_png(Path(path), coords, grid, title or f"loss surface (ε = {eps:.4g})"))
    return LossSurface(coords=coords, loss=grid, eps=float(eps), path=written)


def _save_surface_png(path: Path, coords: Tensor, grid: Tensor, title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    c = coords.numpy()
    cs = ax.contourf(c, c, grid.numpy(), levels=20, cmap="viridis")  # rows of grid: FGSM coord → y axis
    fig.colorbar(cs, ax=ax, label="cross-entropy")
    ax.set_xlabel("random direction (× ε)")
    ax.set_ylabel("FGSM direction (× ε)")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
