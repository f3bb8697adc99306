"""atas_step's cases the sample table misses, against fastat.ops.reference on every launch path (FASTAT_CUDA_ATAS_PATH:
auto, fused, split): every (grad, state, buffer) dtype combination the dispatch instantiates, the order in which a
cluster adds its blocks' partial norms, and hyper-parameters other than the table's."""

from __future__ import annotations

import itertools

import pytest
import torch

from fastat.ops import _specs, reference
from fastat.ops._specs import Sample, sample_atas_step

from ._dryrun import DEV
from .test_cuda_ops import _cuda_kernels_built, atas_path  # noqa: F401  (fixtures used here)
from .test_cuda_ops import F, assert_exact
from .test_cuda_sample_table import check_sample

pytestmark = pytest.mark.cuda

FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def atas_sample(monkeypatch, rows: int, chw: tuple[int, int, int], seed: int = 0, warmup: bool = False) -> Sample:
    """sample_atas_step on rows of (C, H, W) images (the table maps each row length to one image shape)."""
    monkeypatch.setitem(_specs.IMAGE_SHAPES, chw[0] * chw[1] * chw[2], chw)
    return sample_atas_step(rows, chw[0] * chw[1] * chw[2], "random", torch.Generator(DEV).manual_seed(seed), DEV,
                            warmup=warmup)


@pytest.mark.usefixtures("atas_path")
def test_atas_dtypes(monkeypatch):
    """Every (grad, state, buffer) dtype combination the dispatch instantiates, for atas_step and atas_gather."""
    sample = atas_sample(monkeypatch, 2, (3, 16, 16), seed=2)
    delta_buf, v_buf, index, offsets, flips, g, x_adv, x = sample.args
    for gd, dd, bd in itertools.product(FLOATS, repeat=3):
        args = (delta_buf.to(bd), v_buf, index, offsets, flips, g.to(gd), x_adv.to(dd), x.to(dd))
        check_sample("atas_step", Sample(args, sample.kwargs, sample.mutated), f"atas_step {gd} {dd} {bd}")
        assert_exact(F.atas_gather(args[0], index, offsets, flips, args[7]),
                     reference.atas_gather(args[0], index, offsets, flips, args[7]), f"atas_gather {dd} {bd}")


def test_atas_cluster_partials_add_in_rank_order(monkeypatch, emulated):
    """A cluster of 3 blocks (3x32x32 images on an H100), one nonzero g per block's slice, chosen so that the fp64 sum
    of the three partials rounds to a different fp32 in rank order (0, 1, 2: what the reference's sum gives too) than
    in another order."""
    sample = atas_sample(monkeypatch, 1, (3, 32, 32), seed=5)
    delta_buf, v_buf, index, offsets, flips, g, x_adv, x = sample.args
    nonzero = (1.0188270807266235, 5.780956053058617e-05, 8.06960160844028e-05)
    g = torch.zeros_like(g)
    g.view(-1)[torch.tensor([0, 1024, 2048], device=DEV)] = torch.tensor(nonzero, device=DEV)
    v_buf = torch.zeros_like(v_buf)
    bg, vg, bw, vw = delta_buf.clone(), v_buf.clone(), delta_buf.clone(), v_buf.clone()
    if emulated:
        emulated.log()  # the launches so far are not this call's
    F.atas_step(bg, vg, index, offsets, flips, g, x_adv, x, **sample.kwargs)
    reference.atas_step(bw, vw, index, offsets, flips, g, x_adv, x, **sample.kwargs)
    if emulated:  # the emulated H100 shows it took the fused kernel, in a cluster of 3
        launched = emulated.launches()
        assert len(launched) == 1 and "atas_step_fused_kernel" in launched[0] and " cluster=3" in launched[0]
    p = [float(v) ** 2 for v in torch.tensor(nonzero)]  # the fp32 values' squares, in fp64
    in_order = torch.tensor((p[0] + p[1]) + p[2], dtype=torch.float64).float()
    assert in_order != torch.tensor((p[2] + p[1]) + p[0], dtype=torch.float64).float()  # the inputs do tell apart
    want = in_order * 0.5  # v_old = 0, beta = 0.5
    assert vg[index[0]].item() == want.item() == vw[index[0]].item()


@pytest.mark.usefixtures("atas_path")
def test_atas_step_other_hyper_parameters(monkeypatch):
    """beta ≠ 1/2 (the sample table's 0.5 makes beta and 1 - beta interchangeable), step bounds that bind, warm-up."""
    sample = atas_sample(monkeypatch, 3, (3, 32, 32), seed=4)
    for kw in (dict(beta=0.9), dict(beta=0.0), dict(beta=1.0), dict(step_min=0.05, step_max=0.06),
               dict(c=0.5, gamma_over_c=1.5), dict(eps=8 / 255, beta=0.99)):
        check_sample("atas_step", sample, f"atas_step {kw}", dict(sample.kwargs, **kw))
