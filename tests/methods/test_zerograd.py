"""ZeroGrad and MultiGrad against direct computations (methods.md §2-3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastat import ops
from fastat.methods import FGSMRS, MultiGrad, ZeroGrad

from ._helpers import EPS, data, tiny_net


def grad_at(model, x_in, y):
    x_in = x_in.clone().requires_grad_(True)
    return torch.autograd.grad(F.cross_entropy(model(x_in).float(), y), x_in)[0]


def test_q0_is_fgsm_rs_with_alpha_2eps():
    model, (x, y) = tiny_net(bn=True), data()
    torch.manual_seed(0)
    a = ZeroGrad(eps=EPS, q=0.0).perturb(model, x, y)
    torch.manual_seed(0)
    b = FGSMRS(eps=EPS, alpha=2 * EPS).perturb(model, x, y)
    assert torch.equal(a, b)


def test_q1_moves_only_the_max_abs_gradient_coordinates():
    model, (x, y) = tiny_net(), data()
    torch.manual_seed(0)
    x_adv = ZeroGrad(eps=EPS, q=1.0).perturb(model, x, y)
    torch.manual_seed(0)
    delta0 = ops.uniform_init(x, EPS)
    g = grad_at(model, x + delta0, y)
    top = g.abs() == g.abs().flatten(1).amax(1).view(-1, 1, 1, 1)
    moved = ops.reference.box(torch.clamp(delta0 + 2 * EPS * torch.sign(g), -EPS, EPS), x)
    expected = torch.clamp(x + torch.where(top, moved, delta0), 0, 1)
    assert torch.equal(x_adv, expected)
    assert (top.flatten(1).sum(1) >= 1).all()


def test_zero_iters_repeats_from_the_current_delta():
    model, (x, y) = tiny_net(), data()
    torch.manual_seed(0)
    two = ZeroGrad(eps=EPS, q=0.5, zero_iters=2).perturb(model, x, y)
    torch.manual_seed(0)
    d = ops.uniform_init(x, EPS)
    for _ in range(2):
        d = ops.zerograd_step(d, grad_at(model, x + d, y), x, EPS, 2 * EPS, 0.5)
    assert torch.equal(two, torch.clamp(x + d, 0, 1))


def test_multigrad_batched_equals_sequential_without_bn():
    model, (x, y) = tiny_net(), data(b=8)
    outs = []
    for batched in (True, False):
        torch.manual_seed(0)
        outs.append(MultiGrad(eps=EPS, batched=batched).perturb(model, x, y))
    assert torch.equal(outs[0], outs[1])


def test_multigrad_is_unanimous_sign_from_zero():
    model, (x, y) = tiny_net(), data(b=8)
    torch.manual_seed(0)
    x_adv = MultiGrad(eps=EPS, starts=3).perturb(model, x, y)
    torch.manual_seed(0)
    starts = ops.uniform_init(x.unsqueeze(0).expand(3, *x.shape), EPS)
    signs = torch.stack([torch.sign(grad_at(model, x + starts[s], y)) for s in range(3)])
    agree = (signs == signs[0]).all(0) & (signs[0] != 0)
    delta = ops.reference.box(torch.where(agree, EPS * signs[0], 0.0), x)
    assert torch.equal(x_adv, torch.clamp(x + delta, 0, 1))
    assert agree.any() and not agree.all()
    # majority vote (th = 2 of 3) keeps a superset
    torch.manual_seed(0)
    majority = MultiGrad(eps=EPS, starts=3, threshold=2).perturb(model, x, y)
    assert ((majority != x) | (x_adv == x)).all()


def test_multigrad_bn_statistics_batched_vs_sequential():
    x, y = data(b=8)
    counts = {}
    for batched in (True, False):
        model = tiny_net(bn=True)
        MultiGrad(eps=EPS, batched=batched).perturb(model, x, y)
        counts[batched] = int(model[2].num_batches_tracked)
    assert counts == {True: 1, False: 3}
