"""APART: learnable step sizes by gradient ascent, the ω buffer, layer-wise noise (methods.md §7)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastat.methods import APART
from fastat.methods.base import frozen_parameters
from fastat.models import PreActResNet

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


# ---- layer-wise noise adopted from the model's noise sites (PreActResNet: after each block's bn1 + ReLU)


def preact_setup(b: int = 4, seed: int = 3):
    """A narrow PreActResNet-18 on 1×28×28 (Fashion-MNIST-like) inputs, in train mode, and a batch for it."""
    torch.manual_seed(seed)
    model = PreActResNet(in_channels=1, num_classes=3, width=4).train()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, 28, 28, generator=g)
    x[:, :, :3] = 0.0
    return model, x, torch.randint(0, 3, (b,), generator=g), batch_info(b=b, n=10, pad=2)


def site_grads(model, x_in, y):
    """g_b: the gradient of CE_mean at every noise site's output, from one train-mode forward at x_in."""
    acts = []
    handles = [s.register_forward_hook(lambda m, i, o: acts.append(o)) for s in model.noise_sites()]
    with frozen_parameters(model):
        loss = F.cross_entropy(model(x_in.requires_grad_(True)), y)
        grads = torch.autograd.grad(loss, acts)
    for h in handles:
        h.remove()
    return grads


def test_attach_adopts_the_eight_preact_noise_sites_once():
    model, *_ = preact_setup()
    method = APART(eps=EPS)
    assert len(method.parameters()) == 2 and method.hparams["noise_modules"] == 0
    method.attach(model)
    params = method.parameters()
    assert len(params) == 2 + 8 and method.hparams["noise_modules"] == 8
    assert all(p.shape == () and p.item() == 0.0 and p.requires_grad for p in params[2:])
    assert [id(m) for m in method.noise_modules] == [id(m) for m in model.noise_sites()]
    method.attach(model)  # again: no duplicates, the same Parameter objects (an optimiser over them stays valid)
    assert [id(p) for p in method.parameters()] == [id(p) for p in params]
    method.attach(tiny_net())  # a model without noise_sites: no layer-wise noise
    assert len(method.parameters()) == 2 and method.noise_modules == []


def test_adopted_noise_is_added_once_and_alpha_b_get_reversed_gradients():
    model, x, y, b = preact_setup()
    method = APART(eps=EPS)
    method.attach(model)
    with torch.no_grad():
        for i, p in enumerate(method.alpha_layers):
            p.fill_(0.01 * (i + 1))
    sites = model.noise_sites()
    x_adv = method.perturb(model, x, y, b)
    omega_w = window(method.omega, b.index, b.offsets, b.flips, 28, 28).clone()
    noised = []

    def keep(m, i, o):  # registered after APART's hook, so it sees the noised output
        o.retain_grad()
        noised.append(o)

    keepers = [s.register_forward_hook(keep) for s in sites]
    logits = model(x_adv)  # the training forward
    for h in keepers:
        h.remove()
    assert all(len(s._forward_hooks) == 0 for s in sites)  # APART's one-shot hooks are gone
    F.cross_entropy(logits, y).backward()

    x_in = torch.clamp(x + torch.clamp(method.alpha_omega.detach() * omega_w, -EPS, EPS), 0, 1)
    signs = [torch.sign(g) for g in site_grads(model, x_in, y)]
    assert all(s.abs().sum() > 0 for s in signs)
    add = [s.register_forward_hook(lambda m, i, o, k=k: o + 0.01 * (k + 1) * signs[k]) for k, s in enumerate(sites)]
    expected = model(x_adv.detach())
    for h in add:
        h.remove()
    torch.testing.assert_close(logits, expected)
    clean = model(x_adv.detach())
    assert not torch.allclose(clean, logits)  # the noise changed the training forward ...
    torch.testing.assert_close(model(x_adv.detach()), clean)  # ... and only that one
    for p, o, s in zip(method.alpha_layers, noised, signs):
        assert p.grad is not None and p.grad != 0
        torch.testing.assert_close(p.grad, -(o.grad * s).sum())  # .grad = −∂L/∂α_b: SGD descent = ascent


def test_alpha_b_gradient_at_the_official_zero_init():
    model, x, y, b = preact_setup()
    method = APART(eps=EPS)
    method.attach(model)
    F.cross_entropy(model(method.perturb(model, x, y, b)), y).backward()
    assert all(p.grad is not None and p.grad != 0 for p in method.alpha_layers)


def test_explicit_empty_noise_modules_keeps_none():
    model, x, y, b = preact_setup()
    method = APART(eps=EPS, noise_modules=[])
    method.attach(model)
    assert len(method.parameters()) == 2 and method.hparams["noise_modules"] == 0
    x_adv = method.perturb(model, x, y, b)
    assert all(len(s._forward_hooks) == 0 for s in model.noise_sites())
    torch.testing.assert_close(model(x_adv), model(x_adv.detach()))
    given = APART(eps=EPS, noise_modules=[model.layer1[0].noise_site])
    given.attach(model)  # a given list is kept as it is
    assert len(given.parameters()) == 3


def test_state_dict_round_trip_with_adopted_sites():
    model, x, y, b = preact_setup()
    method = APART(eps=EPS)
    method.attach(model)
    with torch.no_grad():
        for i, p in enumerate(method.alpha_layers):
            p.fill_(-0.002 * i)
    method.perturb(model, x, y, b)
    state = method.state_dict()
    assert state["alpha_layers"].shape == (8,)

    resumed = APART(eps=EPS)
    resumed.attach(PreActResNet(in_channels=1, num_classes=3, width=4))  # the trainer attaches before loading
    resumed.load_state_dict(state)
    assert torch.equal(torch.stack([p.detach() for p in resumed.alpha_layers]), state["alpha_layers"])
    with pytest.raises(ValueError, match="attach"):
        APART(eps=EPS).load_state_dict(state)
