"""ZeroGrad's τ follows the installed torch's `torch.quantile` rank rule, which changed in torch 2.14 (the rank
q·(n−1) in fp64 instead of fp32, pytorch#187574): `fastat.ops.reference.quantile_rank` states the rule and every
backend must follow it (the rule is asked of the running torch once, by the Python side and by the compiled
bindings, which pass (lo, hi, w) to the kernels: csrc/common.h, csrc/quantile_rank.h).

Usually the two rules give τs an ulp apart between the same two order statistics, which no mask shows (no row value
lies strictly between them). They differ visibly where the fp32 rank is an exact integer and the fp64 rank is just
above it: with a tiny lo-th value and a huge next one, τ is that tiny value itself under the fp32 rule (kept: |g| ≥ τ)
and slightly above it under the fp64 rule (zeroed).
"""

from __future__ import annotations

import pytest
import torch

import fastat
from fastat.ops.reference import QUANTILE_RANK_FP64, quantile_rank

N, Q = 11, 0.1  # fp32 rank 1.0 exactly; fp64 rank 1.0000000149...
TINY, HUGE = 1e-6, 1e3


def test_rule_matches_torch_quantile():
    """quantile_rank reproduces torch.quantile bit for bit (sorted rows, the FMA lerp) on many (n, q)."""
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 11, 37, 301, 784, 3072):
        x = (torch.rand(64, n, generator=gen) * 10.0 ** torch.randint(-4, 5, (64, 1), generator=gen)).float()
        s = x.sort(dim=1).values.double()
        for q in (0.0, 0.01, 0.1, 0.123, 0.35, 0.5, 0.7, 0.9, 1.0, 1 / 3):
            lo, hi, w = quantile_rank(q, n)
            a, b = s[:, lo], s[:, hi]
            d = (b - a).float().double()  # fp32 difference; the FMA's exact product and one rounding below
            tau = torch.where(torch.tensor(w < 0.5), w * d + a, (w - 1) * d + b).float()
            assert torch.equal(tau, torch.quantile(x, q, dim=1)), (n, q)


def test_probe_agrees_with_the_torch_version():
    """The rule is asked of torch at run time; for released torches it is the version's (fp64 from 2.14 on)."""
    import re

    major, minor = map(int, re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert QUANTILE_RANK_FP64 == ((major, minor) >= (2, 14))


def test_the_rules_differ_here():
    lo, hi, w = quantile_rank(Q, N)
    assert (lo, hi) == ((1, 2) if QUANTILE_RANK_FP64 else (1, 1)) and (w > 0) == QUANTILE_RANK_FP64


def _backends():
    return [pytest.param("torch", id="torch"), pytest.param("native", id="native"),
            pytest.param("triton", id="triton", marks=pytest.mark.triton)]


def _devices():
    return [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("backend", _backends())
def test_zerograd_keeps_the_lo_th_value_exactly_when_torch_does(backend, device):
    reasons = fastat.ops.not_supported_reasons(backend, "zerograd_step", device) if backend != "torch" else []
    if reasons:
        pytest.skip("; ".join(reasons))
    g = torch.tensor([[0.0, TINY] + [HUGE + k for k in range(N - 2)]], device=device)
    g = torch.cat([g, -g.flip(1)])  # a second row: the same values, negated and reversed
    x = torch.full_like(g, 0.5)
    delta = torch.zeros_like(g)
    with fastat.ops.use_backend(backend):
        out = fastat.ops.zerograd_step(delta, g, x, 0.2, 0.1, Q)
    tiny_step = out[0, 1].item(), out[1, N - 2].item()
    expected = (0.0, 0.0) if QUANTILE_RANK_FP64 else (0.1, -0.1)
    assert tiny_step == pytest.approx(expected), "kept iff torch.quantile's τ is the tiny value itself"
    torch.testing.assert_close(out, fastat.ops.reference.zerograd_step(delta, g, x, 0.2, 0.1, Q), rtol=0, atol=0)
