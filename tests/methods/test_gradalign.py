"""GradAlign: the FGSM part and the regulariser against the official formulas written out (methods.md §4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastat.methods import GradAlign, grad_align_lambda, gradient_alignment

from ._helpers import EPS, data, tiny_net


def official_reg(grad1, grad2, lam):
    """train.py:186-202 written out: boolean filtering of zero-norm samples, g/‖g‖, mean cosine."""
    nnz = ((grad1**2).sum([1, 2, 3]) ** 0.5 != 0) * ((grad2**2).sum([1, 2, 3]) ** 0.5 != 0)
    g1, g2 = grad1[nnz], grad2[nnz]
    n1, n2 = (g1**2).sum([1, 2, 3]) ** 0.5, (g2**2).sum([1, 2, 3]) ** 0.5
    cos = torch.sum(g1 / n1[:, None, None, None] * (g2 / n2[:, None, None, None]), (1, 2, 3))
    return lam * (1.0 - cos.mean())


def test_fgsm_part_and_halved_gradient_at_saturated_pixels():
    model, (x, y) = tiny_net(), data()
    method = GradAlign(eps=EPS, lam=0.3)
    x_adv = method.perturb(model, x, y)
    d = torch.zeros_like(x, requires_grad=True)
    plain = torch.autograd.grad(F.cross_entropy(model(x + d), y), d)[0]
    saturated = (x == 0) | (x == 1)
    assert saturated.any()
    assert torch.equal(method.grad1[~saturated], plain[~saturated])
    assert torch.equal(method.grad1[saturated], plain[saturated] / 2)
    delta = torch.clamp(torch.clamp(1.25 * EPS * torch.sign(plain), -EPS, EPS) + x, 0, 1) - x
    torch.testing.assert_close(x_adv, torch.clamp(x + delta, 0, 1), rtol=0, atol=1e-7)


def test_regulariser_matches_the_official_computation():
    model, (x, y) = tiny_net(bn=True), data(b=8)
    method = GradAlign(eps=EPS, lam=0.3)
    x_adv = method.perturb(model, x, y)
    torch.manual_seed(4)
    reg = method.extra_loss(model, x, y, x_adv)
    torch.manual_seed(4)
    eta = torch.zeros_like(x).uniform_(-EPS, EPS).requires_grad_(True)
    grad2 = torch.autograd.grad(F.cross_entropy(model(x + eta), y), eta, create_graph=True)[0]
    expected = official_reg(method.grad1, grad2, 0.3)
    torch.testing.assert_close(reg, expected)
    params = [p for p in model.parameters()]
    ours = torch.autograd.grad(reg, params)
    theirs = torch.autograd.grad(expected, params)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    assert any(a.abs().sum() > 0 for a in ours)  # the double backward reaches the weights
    assert method.stats()["grad_align_reg"] == reg.detach()


def test_zero_norm_samples_are_left_out():
    g = torch.Generator().manual_seed(0)
    g1, g2 = torch.randn(5, 1, 4, 4, generator=g), torch.randn(5, 1, 4, 4, generator=g)
    g1[0] = 0
    g2[3] = 0
    g2.requires_grad_(True)
    cos = gradient_alignment(g1, g2)
    torch.testing.assert_close(1.0 - cos, official_reg(g1, g2, 1.0))
    (grad,) = torch.autograd.grad(cos, g2)
    assert torch.isfinite(grad).all() and not grad[0].any() and not grad[3].any()
    assert torch.isnan(gradient_alignment(torch.zeros(2, 3), torch.ones(2, 3)))  # empty mean, as the official code


def test_lambda_table_and_switches():
    assert grad_align_lambda(8 / 255) == 0.2
    assert grad_align_lambda(14 / 255) == 1.124
    assert grad_align_lambda(8.5 / 255) == pytest.approx(0.02 * 10 ** (8.5 / 8))
    assert grad_align_lambda(8 / 255, "svhn") == pytest.approx(2.5)
    assert GradAlign(eps=8 / 255).lam == 0.2
    with pytest.warns(UserWarning, match="pass lam= explicitly"):
        GradAlign(eps=0.2)
    model, (x, y) = tiny_net(), data()
    off = GradAlign(eps=EPS, lam=0.0)
    x_adv = off.perturb(model, x, y)
    assert off.extra_loss(model, x, y, x_adv) is None
    with pytest.raises(RuntimeError, match="call perturb"):
        GradAlign(eps=EPS, lam=0.1).extra_loss(model, x, y, x)


def test_random_init_is_not_box_clipped_and_stays_in_ball():
    model, (x, y) = tiny_net(), data()
    torch.manual_seed(0)
    x_adv = GradAlign(eps=EPS, lam=0.1, init="random").perturb(model, x, y)
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
