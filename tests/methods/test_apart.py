"""APART: learnable step sizes by gradient ascent, the ω buffer, layer-wise noise (methods.md §7)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastat.methods import APART

from ._helpers import EPS, batch_info, data, tiny_net
from .test_atas import window


def manual_graph(model, x, y, omega_w, alpha, alpha_omega):
    """train.py:97-130 written out: δ₀ = Π_ε(α_ω·ω), g_x at clip(x+δ₀), δ = Π_ε(δ₀ + α·sign(g_x))."""
    delta0 = torch.clamp(alpha_omega * omega_w, -EPS, EPS)
    x_in = torch.clamp(x + delta0.detach(), 0, 1).requires_grad_(True)
    g_x = torch.autograd.grad(F.cross_entropy(model(x_in), y), x_in)[0]
    delta = torch.clamp(delta0 + alpha * torch.sign(g_x), -EPS, EPS)
    return torch.clamp(x + delta, 0, 1)


def test_step_size_gradients_are_ascent_and_omega_update():
    model, (x, y) = tiny_net(), data()
    method = APART(eps=EPS)
    method.load_state_dict({**method.state_dict(), "alpha": torch.tensor(0.03), "alpha_omega": torch.tensor(0.05)})
    b = batch_info()
    torch.manual_seed(0)
    x_adv = method.perturb(model, x, y, b)
    omega0 = method.omega.clone()
    seen = []
    x_adv.register_hook(seen.append)
    F.cross_entropy(model(x_adv), y).backward()

    alpha = torch.tensor(0.03, requires_grad=True)
    alpha_omega = torch.tensor(0.05, requires_grad=True)
    omega_w = window(omega0, b.index, b.offsets, b.flips, 8, 8)
    x_adv2 = manual_graph(model, x, y, omega_w, alpha, alpha_omega)
    torch.testing.assert_close(x_adv, x_adv2)
    d_alpha, d_alpha_omega = torch.autograd.grad(F.cross_entropy(model(x_adv2), y), [alpha, alpha_omega])
    assert d_alpha != 0 and d_alpha_omega != 0
    torch.testing.assert_close(method.alpha.grad, -d_alpha)  # .grad holds −∂L/∂p: SGD descent = official ascent
    torch.testing.assert_close(method.alpha_omega.grad, -d_alpha_omega)

    ratio = torch.tensor(0.03) / (torch.tensor(0.05) + 1e-7)
    expected = torch.clamp(omega_w + ratio * torch.sign(seen[0]), -1, 1)
    assert torch.equal(window(method.omega, b.index, b.offsets, b.flips, 8, 8), expected)
    touched = torch.zeros_like(omega0, dtype=torch.bool)
    for i, (a, c) in zip(b.index.tolist(), b.offsets.tolist()):
        touched[i, :, a:a + 8, c:c + 8] = True
    assert torch.equal(method.omega[~touched], omega0[~touched])


def test_omega_initialised_lazily():
    model, (x, y) = tiny_net(), data()
    method = APART(eps=EPS)
    assert method.state_dict()["omega"] is None
    torch.manual_seed(0)
    method.perturb(model, x, y, batch_info(n=10, pad=2))
    assert method.omega.shape == (10, 1, 12, 12)
    assert 5e-4 < method.omega.std() < 2e-3


def test_layerwise_noise_on_a_given_module_fires_once():
    model, (x, y) = tiny_net(), data()
    relu = model[2]  # post-conv1 ReLU: the activation the official code perturbs
    method = APART(eps=EPS, noise_modules=[relu])
    assert len(method.parameters()) == 3
    with torch.no_grad():
        method.alpha_layers[0].fill_(0.05)
    b = batch_info()
    x_adv = method.perturb(model, x, y, b)
    noisy = model(x_adv)  # the training forward: the ReLU output gets + α_b·sign(g_b)

    # g_b: the pass-1 gradient at the ReLU output, from the same start point
    head, tail = model[:3], model[3:]
    omega_w = window(method.omega, b.index, b.offsets, b.flips, 8, 8)
    x_in = torch.clamp(x + torch.clamp(method.alpha_omega.detach() * omega_w, -EPS, EPS), 0, 1)
    h = head(x_in).detach().requires_grad_(True)
    g_b = torch.autograd.grad(F.cross_entropy(tail(h), y), h)[0]
    torch.testing.assert_close(noisy, tail(head(x_adv) + 0.05 * torch.sign(g_b)))
    F.cross_entropy(noisy, y).backward()
    assert method.alpha_layers[0].grad is not None and method.alpha_layers[0].grad != 0
    torch.testing.assert_close(model(x_adv), tail(head(x_adv)))  # the hook was one-shot


def test_warns_when_the_training_backward_skips_x_adv():
    model, (x, y) = tiny_net(), data()
    method = APART(eps=EPS)
    x_adv = method.perturb(model, x, y, batch_info())
    F.cross_entropy(model(x_adv.detach()), y).backward()
    with pytest.warns(UserWarning, match="must not detach"):
        method.perturb(model, x, y, batch_info())
