"""Diagnostics: gradient alignment, FGSM-vs-PGD loss gap, sign changes between checkpoints, loss-surface PNG."""

from __future__ import annotations

import copy

import pytest
import torch

from fastat.eval.diagnostics import fgsm_pgd_loss_gap, gradient_alignment, loss_surface, sign_change_fraction

from ._models import Linear2, tiny_cnn, tiny_data


def test_gradient_alignment_is_one_for_a_linear_binary_model():
    # ∇ℓ of a binary linear model is (p_other)·(w_o − w_y): the same direction everywhere, so cos = 1.
    gen = torch.Generator().manual_seed(0)
    model = Linear2(torch.randn(2, 16, generator=gen), torch.zeros(2))
    x, y = torch.rand(8, 1, 4, 4, generator=gen), torch.randint(0, 2, (8,), generator=gen)
    assert gradient_alignment(model, x, y, 0.1) == pytest.approx(1.0, abs=1e-5)


def test_gradient_alignment_cnn_in_range_and_seeded():
    model = tiny_cnn()
    x, y = tiny_data(16, model=model)
    a = gradient_alignment(model, x, y, 0.1, seed=1)
    assert -1.0 <= a <= 1.0
    assert a == pytest.approx(gradient_alignment(model, x, y, 0.1, seed=1), rel=1e-7)


def test_loss_gap_keys_and_values():
    model = tiny_cnn()
    x, y = tiny_data(16, model=model)
    out = fgsm_pgd_loss_gap(model, x, y, 0.1, pgd_steps=3, batch_size=7)
    assert set(out) == {"fgsm_loss", "pgd_loss", "fgsm_acc", "pgd_acc", "gap"}
    assert out["gap"] == pytest.approx(out["pgd_loss"] - out["fgsm_loss"])
    assert 0.0 <= out["fgsm_acc"] <= 1.0 and 0.0 <= out["pgd_acc"] <= 1.0


def test_loss_gap_is_zero_for_a_linear_binary_model():
    # FGSM (zero init, α = ε) already lands on the worst corner of a linear model; PGD-10 (α = ε/4) reaches it too.
    gen = torch.Generator().manual_seed(0)
    model = Linear2(torch.randn(2, 16, generator=gen), torch.zeros(2))
    x, y = 0.2 + 0.6 * torch.rand(8, 1, 4, 4, generator=gen), torch.randint(0, 2, (8,), generator=gen)
    out = fgsm_pgd_loss_gap(model, x, y, 0.1, pgd_steps=10)
    assert out["gap"] == pytest.approx(0.0, abs=1e-5) and out["fgsm_loss"] > 0


def test_sign_change_fraction():
    model = tiny_cnn()
    x, y = tiny_data(16, model=model)
    assert sign_change_fraction(model, model, x, y, 0.1) == 0.0
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[0].weight.add_(0.2 * torch.randn(other[0].weight.shape, generator=torch.Generator().manual_seed(0)))
    frac = sign_change_fraction(model, other, x, y, 0.1, init="random")
    assert 0.0 < frac < 1.0


def test_loss_surface_png(tmp_path):
    model = tiny_cnn()
    x, y = tiny_data(4, model=model)
    surf = loss_surface(model, x, y, 0.1, points=5, path=tmp_path / "surface.png")
    assert surf.loss.shape == (5, 5) and torch.isfinite(surf.loss).all()
    png = (tmp_path / "surface.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and surf.path == str(tmp_path / "surface.png")
    with torch.no_grad():
        centre = torch.nn.functional.cross_entropy(model(x), y)
    assert surf.loss[2, 2] == pytest.approx(float(centre), rel=1e-5)  # a = b = 0 is the clean loss
