"""SORA and NuAT against their official formulas (SecondOrderAT/SORA, fzjcdt/FastAT_Benchmark `fast_at/nu_at.py`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastat import ops
from fastat.methods import NuAT, SORA, build_method
from fastat.methods.nuat import nuclear_gap
from fastat.methods.sora import linearity_coefficient, sora_step_size

from ._helpers import EPS, data, tiny_net


def _grad_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    return torch.autograd.grad(F.cross_entropy(model(x), y), x)[0]


# ------------------------------------------------------------------------------------------------------------ SORA
def test_sora_step_size_follows_the_linearity_coefficient():
    """α = α_max·min(1, 0.02/(1 − ρ)): α_max while ρ ≥ 0.98 (and at ρ = 1), 0.2·α_max at ρ = 0.9, 0.01·α_max at −1."""
    rho = torch.tensor([1.0, 0.99, 0.98, 0.9, 0.0, -1.0])
    got = sora_step_size(0.2, rho, 0.02)
    torch.testing.assert_close(got, 0.2 * torch.tensor([1.0, 1.0, 1.0, 0.2, 0.02, 0.01]))


def test_linearity_coefficient_is_one_on_a_linear_loss_and_scales_with_g2():
    g1 = torch.randn(4, 1, 5, 5)
    assert float(linearity_coefficient(g1, g1)) == pytest.approx(1.0)
    assert float(linearity_coefficient(g1, -g1)) == pytest.approx(-1.0)
    assert float(linearity_coefficient(g1, 2 * g1)) == pytest.approx(2.0)  # the EMA clips it to 1
    assert float(linearity_coefficient(torch.zeros_like(g1), g1)) == 0.0  # an all-zero g₁ row: no division by 0


def test_sora_perturb_is_the_official_step():
    """δ = Π_box(η + α·u ⊙ sign(g)), η = Π_box(U(−ε, ε)), g at x + η, u ~ U(0, 1): recomputed from the same draws
    (the generator's stream: η first, then u), with α = α_max = 2ε at ρ₀ = 0.99, and no ε-projection."""
    model, (x, y) = tiny_net(), data(b=16)
    method = SORA(eps=EPS)
    method.generator = torch.Generator().manual_seed(5)
    x_adv = method.perturb(model, x, y)
    g = torch.Generator().manual_seed(5)
    eta = ops.uniform_init(x, EPS, generator=g)
    u = torch.rand(x.shape, generator=g)
    grad = _grad_at(model, x + eta, y)
    want = torch.clamp(x + torch.clamp(eta + 2 * EPS * u * grad.sign(), -x, 1 - x), 0, 1)
    torch.testing.assert_close(x_adv, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(method.attack_grad, grad)
    assert (x_adv - x).abs().max() > EPS  # beyond the ε-ball: the official code does not project


def test_sora_rho_is_an_ema_of_the_clipped_coefficient():
    model, (x, y) = tiny_net(), data()
    method = SORA(eps=EPS)
    method.perturb(model, x, y)
    g1 = method.attack_grad
    method.observe_train_grad(g1)  # ℓ = 1
    assert float(method.rho) == pytest.approx(0.95 * 0.99 + 0.05)
    method.observe_train_grad(5 * g1)  # ℓ = 5, clipped to 1
    assert float(method.rho) == pytest.approx(0.95 * (0.95 * 0.99 + 0.05) + 0.05)
    method.observe_train_grad(torch.zeros_like(g1))  # ℓ = 0
    rho = float(method.rho)
    assert rho == pytest.approx(0.95 * (0.95 * (0.95 * 0.99 + 0.05) + 0.05))
    assert float(method.step_size()) == pytest.approx(2 * EPS * min(1.0, 0.02 / (1 - rho)))
    state = method.state_dict()
    other = SORA(eps=EPS)
    other.load_state_dict(state)
    assert float(other.rho) == rho and other.rho is not method.rho
    with pytest.raises(RuntimeError, match="call perturb first"):
        SORA(eps=EPS).observe_train_grad(g1)


def test_sora_strengthen_and_bad_hyper_parameters():
    method = SORA(eps=EPS)
    assert method.strengthen(alpha_factor=0.5) == "alpha_max 0.2 -> 0.1"
    with pytest.raises(ValueError, match="'rho_init'"):
        SORA(eps=EPS, rho_init=1.5)
    with pytest.raises(ValueError, match="'theta'"):
        SORA(eps=EPS, theta=-0.1)


# ------------------------------------------------------------------------------------------------------------ NuAT
def test_nuclear_gap_is_the_sum_of_singular_values_over_b():
    a, b = torch.randn(7, 10), torch.randn(7, 10)
    want = torch.linalg.svdvals(a - b).sum() / 7
    torch.testing.assert_close(nuclear_gap(a, b), want)


def test_nuat_weight_ramps_per_epoch():
    method = build_method("nuat", eps=EPS, run_epochs=10)
    seen = []
    for epoch in (1, 2, 6, 10):
        method.on_epoch_start(epoch)
        seen.append(method.nuc_weight)
    assert seen == pytest.approx([0.0, 0.4, 2.0, 3.6])  # nuc_max 4 · (e − 1) / 10


def test_nuat_attack_starts_at_plus_minus_half_eps_and_alternates_its_loss():
    """The start is x ± ε/2 (box-clipped); the even batches of an epoch step on CE alone, the odd ones on CE plus
    λ_e·‖f(x) − f(x₀)‖_*/B (recomputed here from the same draws)."""
    model, (x, y) = tiny_net(), data(b=16)
    method = NuAT(eps=EPS, epochs=4)
    method.on_epoch_start(3)  # λ_e = 4 · 2/4 = 2
    for batch in range(2):
        method.generator = torch.Generator().manual_seed(9)
        x_adv = method.perturb(model, x, y)
        signs = torch.rand(x.shape, generator=torch.Generator().manual_seed(9)) < 0.5
        x0 = torch.clamp(x + torch.where(signs, EPS / 2, -EPS / 2), 0, 1).requires_grad_(True)
        logits = model(x0)
        loss = F.cross_entropy(logits, y)
        if batch == 1:
            loss = loss + 2.0 * nuclear_gap(model(x).detach(), logits)
        (grad,) = torch.autograd.grad(loss, x0)
        torch.testing.assert_close(method.attack_grad, grad)
        want = torch.clamp(x + torch.clamp(x0.detach() - x + EPS * grad.sign(), -EPS, EPS), 0, 1)
        torch.testing.assert_close(x_adv, want, rtol=0, atol=1e-6)
    assert method.batch_in_epoch == 2
    method.on_epoch_start(4)
    assert method.batch_in_epoch == 0


def test_nuat_trains_on_the_clean_loss_plus_the_regulariser():
    """The training loss: CE(f(x), y) + λ_e·‖f(x) − f(x_adv)‖_*/B, the adversarial forward first (BatchNorm's
    running statistics see x_adv, then x); the adversarial logits come back for the training accuracy."""
    seen = []
    model = nn.Sequential(tiny_net())
    model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    (x, y), method = data(), NuAT(eps=EPS, epochs=2)
    method.on_epoch_start(2)  # λ_e = 2
    x_adv = torch.clamp(x + 0.05, 0, 1)
    loss, logits = method.train_loss(model, x, y, x_adv, label_smoothing=0.1)
    assert seen[0] is x_adv and seen[1] is x
    with torch.no_grad():
        clean, adv = model(x), model(x_adv)
    want = F.cross_entropy(clean, y, label_smoothing=0.1) + 2.0 * nuclear_gap(clean, adv)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(logits, adv)
