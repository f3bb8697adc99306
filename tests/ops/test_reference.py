"""The reference against facts stated independently in methods.md (not against itself)."""

from __future__ import annotations

import pytest
import torch

from fastat.ops import reference as ref

EPS = 8 / 255


@pytest.mark.parametrize("q,zeroed", [(0.35, 1075), (0.45, 1382), (0.7, 2150)])
def test_zerograd_zeroes_exactly_the_documented_count(q, zeroed):
    # methods.md §2: for n = 3072 distinct |g|, q = 0.35 zeroes exactly 1075 coordinates (1382 for 0.45, 2150 for 0.7).
    g = torch.randn(4, 3, 32, 32)
    x = torch.full_like(g, 0.5)
    out = ref.zerograd_step(torch.zeros_like(g), g, x, EPS, 2 * EPS, q)
    assert ((out == 0).flatten(1).sum(1) == zeroed).all()


def test_zerograd_survivors_end_at_eps_sign():
    # α = 2ε and |δ₀| ≤ ε: every kept coordinate ends at exactly ε·sign(g); zeroed ones keep δ₀ (methods.md §2).
    g, x = torch.randn(2, 784), torch.full((2, 784), 0.5)
    d0 = (torch.rand(2, 784) * 2 - 1) * EPS
    out = ref.zerograd_step(d0, g, x, EPS, 2 * EPS, 0.35)
    tau = torch.quantile(g.abs(), 0.35, dim=1, keepdim=True)
    keep = g.abs() >= tau
    eps32 = torch.tensor(EPS, dtype=torch.float32)
    assert torch.equal(out[keep], (eps32 * torch.sign(g))[keep])
    assert torch.equal(out[~keep], d0[~keep])


def test_zerograd_keeps_ties_with_tau():
    g = torch.tensor([[1.0, 1.0, 1.0, 2.0]])  # τ(q=0.5) = 1.0: the ties are kept (strict < zeroes)
    out = ref.zerograd_step(torch.zeros_like(g), g, torch.full_like(g, 0.5), 0.1, 0.2, 0.5)
    assert torch.equal(out, torch.full_like(g, torch.tensor(0.1).item()))


def test_zerograd_nan_row_does_not_move():
    g = torch.randn(2, 10)
    g[0, 3] = float("nan")
    d0 = torch.full_like(g, 0.05)
    out = ref.zerograd_step(d0, g, torch.full_like(g, 0.5), 0.1, 0.2, 0.35)
    assert torch.equal(out[0], d0[0])  # τ = NaN: nothing kept, δ only re-projected
    assert not torch.equal(out[1], d0[1])


def test_multigrad_unanimous_and_zero_start():
    g = torch.tensor([[[1.0, -2.0, 3.0, 1.0]], [[2.0, -1.0, 1.0, 0.0]], [[0.5, -0.1, -1.0, 1.0]]])  # (S=3, B=1, 4)
    x = torch.full((1, 4), 0.5)
    eps = torch.tensor(0.1).item()
    out = ref.multigrad_step(g, x, 0.1, 0.2)
    assert torch.equal(out, torch.tensor([[eps, -eps, 0.0, 0.0]]))  # disagreement and an exact zero are rejected
    majority = ref.multigrad_step(g, x, 0.1, 0.2, threshold=2)
    assert torch.equal(majority, torch.tensor([[eps, -eps, eps, eps]]))


def test_box_keeps_x_plus_delta_in_unit_interval():
    x = torch.rand(64, 100)
    d = ref.pgd_step(torch.zeros_like(x), torch.randn_like(x), x, 0.3, 0.3)
    assert ((x + d) >= 0).all() and ((x + d) <= 1).all() and (d.abs() <= 0.3).all()


def test_pgd_step_inactive_rows_unchanged():
    x, d0, g = torch.rand(4, 5), torch.full((4, 5), 7.0), torch.randn(4, 5)  # δ₀ outside every bound
    out = ref.pgd_step(d0, g, x, 0.1, 0.05, active=torch.tensor([True, False, True, False]))
    assert torch.equal(out[1], d0[1]) and torch.equal(out[3], d0[3])
    assert (out[0].abs() <= 0.1).all()


def _atas_case():
    buf = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).view(2, 1, 4, 5) / 100  # N=2, C=1, H+2p=4, W+2p=5
    x = torch.full((1, 1, 2, 3), 0.5)  # H=2, W=3, p=1
    return buf, x


def test_atas_gather_crop_and_flip():
    buf, x = _atas_case()
    index, offsets = torch.tensor([1]), torch.tensor([[1, 2]])
    plain = ref.atas_gather(buf, index, offsets, torch.tensor([False]), x)
    flipped = ref.atas_gather(buf, index, offsets, torch.tensor([True]), x)
    window = buf[1, :, 1:3, 2:5]
    assert torch.equal(plain[0], (0.5 + window).clamp(0, 1))
    assert torch.equal(flipped[0], (0.5 + window.flip(-1)).clamp(0, 1))


def test_atas_step_writes_unflipped_window_only_and_updates_v():
    buf, x = _atas_case()
    before = buf.clone()
    v = torch.tensor([0.0, 0.25])
    g = torch.tensor([[[[1.0, -1.0, 0.0], [2.0, 1.0, -3.0]]]])
    kw = dict(eps=0.1, c=0.01, beta=0.5, gamma_over_c=16 / 255, step_min=4 / 255, step_max=14 / 255)
    index, offsets, flips = torch.tensor([1]), torch.tensor([[1, 2]]), torch.tensor([True])
    out = ref.atas_step(buf, v, index, offsets, flips, g, x.clone(), x, warmup=False, **kw)
    expected_v = 0.5 * 0.25 + 0.5 * float((g**2).sum())
    assert v[1].item() == pytest.approx(expected_v) and v[0].item() == 0.0
    step = min(max((16 / 255) / (1 + expected_v**0.5 / 0.01), 4 / 255), 14 / 255)
    assert torch.allclose(out, (0.5 + step * torch.sign(g)).clamp(0.4, 0.6))
    assert torch.allclose(buf[1, :, 1:3, 2:5], (out - x)[0].flip(-1))  # written back un-flipped
    mask = torch.ones_like(buf, dtype=torch.bool)
    mask[1, :, 1:3, 2:5] = False
    assert torch.equal(buf[mask], before[mask])  # outside the window nothing changes


def test_atas_step_warmup_uses_eps_and_keeps_v():
    buf, x = _atas_case()
    v = torch.tensor([0.3, 0.25])
    g = torch.ones(1, 1, 2, 3)
    out = ref.atas_step(buf, v, torch.tensor([0]), torch.tensor([[0, 0]]), torch.tensor([False]), g, x.clone(), x,
                        eps=0.1, c=0.01, beta=0.5, gamma_over_c=0.06, step_min=0.01, step_max=0.05, warmup=True)
    assert torch.equal(v, torch.tensor([0.3, 0.25]))
    assert torch.allclose(out, torch.full_like(x, 0.6))


def _pgi_case():
    buf, x = _atas_case()  # N=2, C=1, window 2x3 in a 4x5 frame
    mom = torch.zeros_like(buf)
    g = torch.tensor([[[[1.0, -1.0, 0.0], [2.0, 1.0, -3.0]]]])
    x_adv = torch.tensor([[[[0.5, 0.625, 0.375], [0.5, 0.5, 0.5]]]])  # δ₀ = 0, +1/8, -1/8, 0, 0, 0 (exact)
    return buf, mom, torch.tensor([1]), torch.tensor([[1, 2]]), torch.tensor([True]), g, x_adv, x


def test_pgi_step_attack_prior_and_momentum_from_a_zero_momentum():
    # Zero momentum: m = g/‖g‖₁, so sign(m) = sign(g); ‖g‖₁ = 8 over the batch.
    buf, mom, index, offsets, flips, g, x_adv, x = _pgi_case()
    before = buf.clone()
    eps = 0.25
    out = ref.pgi_step(buf, mom, index, offsets, flips, g, g.abs().sum(), x_adv, x, eps=eps, decay=0.5)
    d0 = x_adv - x
    assert torch.equal(out, (x_adv + eps * torch.sign(g)).clamp(x - eps, x + eps).clamp(0, 1))  # x + δ₀ = x_adv here
    assert torch.equal(buf[1, :, 1:3, 2:5], (d0 + eps * torch.sign(g)).clamp(-eps, eps)[0].flip(-1))  # the next prior
    assert torch.equal(mom[1, :, 1:3, 2:5], (g / 8)[0].flip(-1))  # m, un-flipped into the window
    outside = torch.ones_like(buf, dtype=torch.bool)
    outside[1, :, 1:3, 2:5] = False
    assert torch.equal(buf[outside], before[outside]) and not mom[outside].any()  # nothing else is written


def test_pgi_step_prior_follows_the_momentum_and_the_attack_only_the_gradient():
    buf, mom, index, offsets, flips, g, x_adv, x = _pgi_case()
    mom[1, :, 1:3, 2:5] = -torch.sign(g)[0].flip(-1)  # |decay·mom| = 1/2 outweighs every |g|/‖g‖₁ ≤ 3/8
    out = ref.pgi_step(buf, mom, index, offsets, flips, g, g.abs().sum(), x_adv, x, eps=0.0625, decay=0.5)
    prior = buf[1, :, 1:3, 2:5].flip(-1)[None]
    d0 = x_adv - x
    assert torch.equal(prior, torch.where(g == 0, d0.clamp(-0.0625, 0.0625), -0.0625 * torch.sign(g)))
    fresh = _pgi_case()  # the same step from a zero momentum: the attack does not depend on the momentum
    assert torch.equal(out, ref.pgi_step(*fresh[:6], g.abs().sum(), *fresh[6:], eps=0.0625, decay=0.5))
    assert torch.equal(mom[1, :, 1:3, 2:5].flip(-1)[None], g / 8 - 0.5 * torch.sign(g))


def test_pgi_step_zero_batch_gradient_gives_nan_momentum_and_no_move():
    # ‖g‖₁ = 0: g/‖g‖₁ = 0/0 = NaN in every window; sign(NaN) = 0, so the prior is δ₀ re-projected and x_adv' = x_adv.
    buf, mom, index, offsets, flips, g, x_adv, x = _pgi_case()
    g = torch.zeros_like(g)
    out = ref.pgi_step(buf, mom, index, offsets, flips, g, g.abs().sum(), x_adv, x, eps=0.0625, decay=0.5)
    assert torch.equal(out, x_adv.clamp(x - 0.0625, x + 0.0625))
    assert mom[1, :, 1:3, 2:5].isnan().all() and not mom[0].isnan().any()
    assert torch.equal(buf[1, :, 1:3, 2:5].flip(-1)[None], (x_adv - x).clamp(-0.0625, 0.0625))


def test_uniform_init_in_ball_and_box_and_seeded():
    x = torch.rand(8, 3, 4, 4)
    a = ref.uniform_init(x, 0.2, generator=torch.Generator().manual_seed(3))
    b = ref.uniform_init(x, 0.2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and (a.abs() <= 0.2).all() and ((x + a) >= 0).all() and ((x + a) <= 1).all()


def test_sora_step_is_the_official_formula():
    """SecondOrderAT/SORA `src/attacks/sora.py`: delta = eta + alpha·rand_like(grad)·grad.sign(), clamped into
    [−x, 1 − x] (no ε-projection); u drawn as torch.rand draws it."""
    x = torch.rand(4, 3, 5, 5)
    x.view(-1)[:2] = torch.tensor([0.0, 1.0])
    eta = (torch.rand(x.shape) * 2 - 1) * EPS
    g = torch.randn(x.shape)
    g.view(-1)[2:4] = torch.tensor([0.0, float("nan")])
    alpha = torch.tensor(2 * EPS)
    out = ref.sora_step(eta, g, x, alpha, generator=torch.Generator().manual_seed(4))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(4))
    assert torch.equal(out, torch.clamp(eta + alpha * u * g.sign(), -x, 1 - x))
    assert (out - eta).abs().max() <= 2 * EPS and ((x + out) >= 0).all() and ((x + out) <= 1).all()
    assert (out - eta).abs().max() > EPS  # no ε-projection: a step of up to α from η
    assert torch.equal(out.view(-1)[2:4], eta.view(-1)[2:4].clamp(-x.view(-1)[2:4], 1 - x.view(-1)[2:4]))
    assert torch.equal(ref.sora_step(eta, g, x, torch.tensor(0.0)), torch.clamp(eta, -x, 1 - x))


def test_sora_step_scale_is_uniform_in_zero_one():
    """At x = 0.5 with η = 0 and g > 0 the result is α·u: u covers [0, 1) uniformly (mean 1/2, variance 1/12)."""
    n = 1 << 16
    x, eta, g = torch.full((n,), 0.5), torch.zeros(n), torch.ones(n)
    u = ref.sora_step(eta, g, x, torch.tensor(0.25), generator=torch.Generator().manual_seed(0)) / 0.25
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sora_step_low_precision_state(dtype):
    """fp16/bf16 δ and x: math in fp32, one rounding to δ's dtype; the result is contiguous."""
    x = torch.rand(2, 3, 4, 4).to(dtype).contiguous(memory_format=torch.channels_last)
    eta = ((torch.rand(x.shape) * 2 - 1) * EPS).to(dtype)
    g = torch.randn(x.shape, dtype=torch.bfloat16)
    out = ref.sora_step(eta, g, x, torch.tensor(EPS), generator=torch.Generator().manual_seed(1))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    want = torch.clamp(eta.float() + EPS * u * g.float().sign(), -x.float(), 1 - x.float()).to(dtype)
    assert out.dtype == dtype and out.is_contiguous() and torch.equal(out, want)
