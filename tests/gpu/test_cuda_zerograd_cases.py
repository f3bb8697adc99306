"""zerograd_step's cases the sample table misses, exact against fastat.ops.reference: the cluster path's distributed
histograms at extreme quantiles, runs of ties at the order statistics, the interpolation weight 1/2 where torch's
lerp switches formulas, and ±inf gradients (tau may be inf; at w = 1/2 with an infinite upper order statistic it is
NaN). Rows of 20000+ elements take a cluster of blocks on an H100 (and on the emulated one)."""

from __future__ import annotations

import pytest
import torch

from fastat.ops import reference
from fastat.ops._specs import sample_zerograd_step

from ._dryrun import DEV, emulator_only
from .test_cuda_ops import _cuda_kernels_built  # noqa: F401  (fixture used here)
from .test_cuda_ops import F, assert_exact
from .test_cuda_sample_table import check_sample

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("q", [0.0, 1e-7, 0.35, 0.5, 0.999, 1.0])
@pytest.mark.parametrize("variant", ["random", "ties", "zeros", "nan", "grad_bf16", "grad_fp16"])
def test_zerograd_cluster_quantiles(variant, q):
    """The cluster path's distributed histograms at the extreme ranks, with ties, zeros and NaN spread over blocks."""
    sample = sample_zerograd_step(3, 20011, variant, torch.Generator(DEV).manual_seed(3), DEV, q=q)
    check_sample("zerograd_step", sample, f"zerograd cluster {variant} q={q}")


def test_zerograd_ties_at_the_threshold():
    """Rows made of a few magnitudes, so that lo and hi order statistics fall in and just past a run of ties."""
    for n in (9, 784, 20000):
        g = torch.tensor([1.0, -2.0, 2.0, 3.0] * ((n + 3) // 4), device=DEV)[:n].repeat(2, 1)
        x, d = torch.full((2, n), 0.5, device=DEV), torch.zeros(2, n, device=DEV)
        for q in (0.25, 0.5, 0.75):
            assert_exact(F.zerograd_step(d, g, x, 0.1, 0.2, q), reference.zerograd_step(d, g, x, 0.1, 0.2, q),
                         f"n={n} q={q}")


@pytest.mark.parametrize("cols", [4, 784, 20010])  # one block, one block, a cluster of 2
def test_zerograd_interpolation_weight_one_half(cols):
    """q = 0.5 on an even row: rank (n-1)/2 has w = 0.5 exactly, where torch's lerp switches from the low-end to the
    high-end formula, with half of each row in [1, 2) and half in [2^20, 2^21) so that the median falls in a gap.
    (The two formulas round apart there about half the time, but tau only shows through the mask |g| >= tau, and no
    element lies strictly between the two order statistics: the choice cannot change an output.)"""
    gen = torch.Generator().manual_seed(cols)
    low = 1 + torch.rand(8, cols // 2, generator=gen)
    high = 2.0**20 * (1 + torch.rand(8, cols - cols // 2, generator=gen))
    g = torch.cat([low, high], 1)[:, torch.randperm(cols, generator=gen)]
    g = torch.where(torch.rand(g.shape, generator=gen) < 0.5, -g, g).to(DEV)
    x, d = torch.full_like(g, 0.5), torch.zeros_like(g)
    assert_exact(F.zerograd_step(d, g, x, 0.1, 0.2, 0.5), reference.zerograd_step(d, g, x, 0.1, 0.2, 0.5))


@pytest.mark.parametrize("cols", [9, 784, 20011])
def test_zerograd_infinite_gradients(cols):
    """±inf in |g| ranks above every finite value and below NaN: tau may be inf (then only the infs are kept)."""
    g = torch.randn(4, cols, generator=torch.Generator().manual_seed(cols))
    g[0, ::3] = float("inf")  # a third of the row: the 0.7-quantile lands among them
    g[1, 0] = float("-inf")
    g[2, :] = float("inf")
    g[3, 1], g[3, 2] = float("inf"), float("nan")  # NaN wins: nothing kept
    g = g.to(DEV)
    x, d = torch.full_like(g, 0.5), torch.zeros_like(g)
    for q in (0.3, 0.7, 1.0):
        assert_exact(F.zerograd_step(d, g, x, 0.1, 0.2, q), reference.zerograd_step(d, g, x, 0.1, 0.2, q), f"q={q}")


INF_CASES = [pytest.param(2, {}, id="2"), pytest.param(784, {}, id="784"), pytest.param(20002, {}, id="20002-cluster"),
             # an emulated device without clusters takes the streaming block for the same row
             pytest.param(20002, {"clusters": False}, id="20002-stream", marks=emulator_only)]


@pytest.mark.parametrize("n,settings", INF_CASES)
def test_zerograd_inf_at_the_quantile(n, settings, emulated):
    """±inf must not count as NaN; at w = 0.5 with the hi-th value inf, torch's lerp gives NaN (inf - inf·0.5), so
    nothing is kept, while the other lerp formula would give inf and keep the infs."""
    if emulated:
        emulated.configure(**settings)
    gen = torch.Generator().manual_seed(n)
    g = torch.randn(2, n, generator=gen)
    sign = torch.where(torch.rand(2, n, generator=gen) < 0.5, -1.0, 1.0)
    g[0, torch.randperm(n, generator=gen)[: n // 2]] = float("inf")  # row 0: the hi-th is inf, the lo-th finite
    g[0] *= sign[0]
    g[1, torch.randperm(n, generator=gen)[: max(1, n // 10)]] = float("-inf")  # row 1: a few infs, tau finite
    g = g.to(DEV)
    x, d = torch.full((2, n), 0.5, device=DEV), torch.zeros(2, n, device=DEV)
    for q in (0.5, 0.35, 1.0):
        assert_exact(F.zerograd_step(d, g, x, 0.1, 0.2, q), reference.zerograd_step(d, g, x, 0.1, 0.2, q),
                     f"n={n} q={q}")
