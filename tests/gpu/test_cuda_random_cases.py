"""Seeded random cases for every op but uniform_init, against fastat.ops.reference: row lengths around the launch
paths' boundaries, dtypes, quantiles, thresholds, masks, odd images and pads. Under the emulator each seed also runs on
another emulated device (no clusters, few SMs, a cluster that does not fit or is refused, less shared memory, kernels
built for sm_80), so the launchers' fallbacks see the same cases; a GPU is the device it is."""

from __future__ import annotations

import random

import pytest
import torch

from fastat.ops import reference
from fastat.ops._specs import SPECS

from ._dryrun import DEV
from .test_cuda_ops import _cuda_kernels_built  # noqa: F401  (fixture used here)
from .test_cuda_ops import F, assert_exact

pytestmark = pytest.mark.cuda

FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _device_settings(seed: int, rng: random.Random) -> dict:
    return [{}, {"clusters": False}, {"sm_count": rng.randint(1, 200)}, {"max_active_clusters": 0},
            {"smem_optin": rng.choice([0, 48 * 1024, 100 * 1024])}, {"ptx_version": 80},
            {"refuse_cluster_launch": True}][seed % 7]


@pytest.mark.parametrize("seed", range(20))
def test_random_cases(seed, emulated):
    """Random row lengths (around the path boundaries too), dtypes, q and (emulated) devices, seeded."""
    rng = random.Random(seed)
    settings = _device_settings(seed, rng)  # drawn on a GPU too: the cases below stay the same
    if emulated:
        emulated.configure(**settings)
    gen = torch.Generator().manual_seed(seed)
    dt, gdt, bdt = (rng.choice(FLOATS) for _ in range(3))
    what = f"seed={seed} {settings if emulated else 'gpu'} {dt} {gdt} {bdt}"

    def dev(*tensors):
        return [t.to(DEV) if isinstance(t, torch.Tensor) else t for t in tensors]

    # ZeroGrad
    rows = rng.randint(1, 3)
    n = rng.choice([rng.randint(1, 3000), rng.randint(16000, 17000), rng.randint(30000, 90000)])
    x, d = torch.rand(rows, n, generator=gen).to(dt), ((torch.rand(rows, n, generator=gen) - 0.5) * 0.3).to(dt)
    g = torch.randn(rows, n, generator=gen)
    g = torch.round(g * rng.choice([1, 2, 4])) / 4 if rng.random() < 0.5 else g
    g[torch.rand(rows, n, generator=gen) < rng.random() * 0.5] = 0
    g = g.to(gdt)
    q = rng.choice([0.0, 1.0, rng.random()])
    d, g, x = dev(d, g, x)
    assert_exact(F.zerograd_step(d, g, x, 0.1, 0.2, q), reference.zerograd_step(d, g, x, 0.1, 0.2, q),
                 f"zerograd {rows}x{n} q={q} {what}")
    # ATAS, both ops, odd images and pads
    b, c, h, w, p = rng.randint(1, 4), rng.randint(1, 3), rng.randint(1, 60), rng.randint(1, 60), rng.randint(0, 4)
    n_ex = b + rng.randint(0, 3)
    x = torch.rand(b, c, h, w, generator=gen).to(dt)
    x_adv = (x.float() + 0.05 * torch.randn(b, c, h, w, generator=gen)).clamp(0, 1).to(dt)
    g = (torch.randn(b, c, h, w, generator=gen) * 0.05 / (c * h * w) ** 0.5).to(gdt)
    buf = ((torch.rand(n_ex, c, h + 2 * p, w + 2 * p, generator=gen) * 2 - 1) * 0.1).to(bdt)
    v = torch.rand(n_ex, generator=gen) * 0.0025
    idx = torch.randperm(n_ex, generator=gen)[:b]
    off, fl = torch.randint(0, 2 * p + 1, (b, 2), generator=gen), torch.rand(b, generator=gen) < 0.5
    kw = dict(SPECS["atas_step"].make(1, 3, "random", gen, "cpu").kwargs, warmup=rng.random() < 0.3)
    x, x_adv, g, buf, v, idx, off, fl = dev(x, x_adv, g, buf, v, idx, off, fl)
    assert_exact(F.atas_gather(buf, idx, off, fl, x), reference.atas_gather(buf, idx, off, fl, x),
                 f"atas_gather {what}")
    b1, v1, b2, v2 = buf.clone(), v.clone(), buf.clone(), v.clone()
    got = F.atas_step(b1, v1, idx, off, fl, g, x_adv, x, **kw)
    want = reference.atas_step(b2, v2, idx, off, fl, g, x_adv, x, **kw)
    # the step size's sqrt/divide may differ by an ulp; it can then round the stored values one ulp of their dtype apart
    for name, a, e, dtype in (("out", got, want, dt), ("delta_buf", b1, b2, bdt)):
        torch.testing.assert_close(a, e, rtol=torch.finfo(dtype).eps if dtype != torch.float32 else 0,
                                   atol=SPECS["atas_step"].atol,
                                   msg=lambda m, name=name: f"atas_step {name} {what}: {m}")
    assert_exact(v1, v2, f"atas_step v {what}")
    # PGD with a mask, MultiGrad with a random threshold
    rows, n = rng.randint(1, 5), rng.randint(1, 9000)
    x, d = torch.rand(rows, n, generator=gen).to(dt), ((torch.rand(rows, n, generator=gen) - 0.5) * 0.3).to(dt)
    g = torch.randn(rows, n, generator=gen).to(gdt)
    active = torch.rand(rows, generator=gen) < 0.5 if rng.random() < 0.5 else None
    d, g, x, active = dev(d, g, x, active)
    assert_exact(F.pgd_step(d, g, x, 0.1, 0.03, active), reference.pgd_step(d, g, x, 0.1, 0.03, active),
                 f"pgd {rows}x{n} {what}")
    starts = rng.randint(1, 6)
    grads = torch.randn(starts, rows, 1, 1, n, generator=gen)
    grads[torch.rand(grads.shape, generator=gen) < 0.1] = 0
    (grads,) = dev(grads.to(gdt))
    th = rng.choice([None, *range(1, starts + 1)])
    xs = x.view(rows, 1, 1, n)
    assert_exact(F.multigrad_step(grads, xs, 0.1, 0.2, th), reference.multigrad_step(grads, xs, 0.1, 0.2, th),
                 f"multigrad {starts} starts th={th} {what}")
