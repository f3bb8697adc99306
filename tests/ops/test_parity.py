"""Every available backend against the reference, over the OpSpec sample table (shapes x variants x op parameters).

Exact ops must match bit for bit (assert_close with rtol=atol=0, NaN positions included); atas_step's outputs may
differ by a few ulp from the sqrt/divide of the step size, while its v buffer must match exactly. Outputs are
allocated poisoned (NaN), mutated buffers start from random values, and inputs must be left untouched.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch

import fastat
from fastat.ops._specs import SPECS, VARIANTS

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
ROWS = (1, 7, 128)
COLS = (1, 3, 784, 3072)


def _backends():
    return [pytest.param("native", id="native"), pytest.param("triton", id="triton", marks=pytest.mark.triton)]


def _devices():  # lists: pytest 9 deprecates generators as parametrize values
    return [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]


def _param_grid(spec):
    names = list(spec.params or {})
    for values in itertools.product(*(spec.params[n] for n in names)):
        yield dict(zip(names, values))


def _clone_mutated(sample):
    return tuple(a.clone() if i in sample.mutated else a for i, a in enumerate(sample.args))


def _outputs(out, args, sample):
    return (out,) + tuple(args[i] for i in sample.mutated)


def _compare(got, want, spec, what):
    for k, (g, w) in enumerate(zip(got, want)):
        exact = spec.exact or (spec.name == "atas_step" and k == 2)  # v_buf is exact (fp64-accumulated norms)
        atol = 0.0 if exact else (spec.atol if g.dtype == torch.float32 else torch.finfo(g.dtype).eps)
        torch.testing.assert_close(g, w, rtol=0, atol=atol, equal_nan=True, msg=lambda m: f"{what} output {k}: {m}")


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cols", COLS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("op", list(SPECS))
def test_backend_matches_reference(op, rows, cols, variant, backend, device, request, poisoned_allocations):
    spec = SPECS[op]
    if request.config.getoption("--subset") and (rows, cols) not in ((7, 784), (1, 3)):
        pytest.skip("--subset")
    if backend == "triton" and device == "cpu" and (rows > 7 or cols not in (3, 784) or not INTERPRETED):
        pytest.skip("the Triton interpreter is slow: small shapes only (test_triton_kernels covers 1 and 3072)")
    if spec.random and not (backend == "native" and device == "cpu"):
        pytest.skip("only the CPU C++ kernel draws from torch's own random stream")
    reasons = fastat.ops.not_supported_reasons(backend, op, device)
    if reasons:
        pytest.skip("; ".join(reasons))

    for params in _param_grid(spec):
        what = f"{op}[{backend}] rows={rows} cols={cols} {variant} {params}"
        sample = spec.make(rows, cols, variant, torch.Generator(device).manual_seed(rows * 7919 + cols), device, **params)
        snapshot = [a.clone() if isinstance(a, torch.Tensor) else a for a in sample.args]
        fn = getattr(fastat.ops, op)

        def call(name):
            args = _clone_mutated(sample)
            kwargs = dict(sample.kwargs)
            if spec.random:
                kwargs["generator"] = torch.Generator(device).manual_seed(1234)
            with fastat.ops.use_backend(name):
                return _outputs(fn(*args, **kwargs), args, sample)

        want = call("torch")
        got = call(backend)
        _compare(got, want, spec, what)
        for i, (before, after) in enumerate(zip(snapshot, sample.args)):
            if isinstance(before, torch.Tensor):
                assert torch.equal(before.nan_to_num(), after.nan_to_num()), f"{what}: input {i} was modified"


@pytest.mark.parametrize("backend", [pytest.param("torch", id="torch")] + _backends())
def test_empty_batch(backend):
    """A batch of 0 samples (e.g. a rank's share of a tiny last batch) gives empty results on every backend."""
    if fastat.ops.not_supported_reasons(backend, "zerograd_step", "cpu") or (backend == "triton" and not INTERPRETED):
        pytest.skip(f"{backend} not available on the CPU here")
    d = g = x = torch.zeros(0, 3, 5, 5)
    buf, v = torch.rand(4, 3, 9, 9), torch.rand(4)
    index, offsets, flips = torch.zeros(0, dtype=torch.long), torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.bool)
    with fastat.ops.use_backend(backend):
        outs = [fastat.ops.zerograd_step(d, g, x, 0.1, 0.2, 0.35), fastat.ops.pgd_step(d, g, x, 0.1, 0.025),
                fastat.ops.multigrad_step(torch.zeros(3, 0, 3, 5, 5), x, 0.1, 0.1),
                fastat.ops.atas_gather(buf, index, offsets, flips, x)]
        if not fastat.ops.not_supported_reasons(backend, "uniform_init", "cpu"):
            outs.append(fastat.ops.uniform_init(x, 0.1))
        if not fastat.ops.not_supported_reasons(backend, "sora_step", "cpu"):
            outs.append(fastat.ops.sora_step(d, g, x, torch.tensor(0.2)))
        before = (buf.clone(), v.clone())
        outs.append(fastat.ops.atas_step(buf, v, index, offsets, flips, g, x, x, eps=0.1, c=0.01, beta=0.5,
                                         gamma_over_c=0.06, step_min=0.01, step_max=0.05, warmup=False))
        mom = torch.rand(4, 3, 9, 9)
        before += (mom.clone(),)
        outs.append(fastat.ops.pgi_step(buf, mom, index, offsets, flips, g, g.abs().sum(), x, x, eps=0.1, decay=0.3))
    assert all(o.shape == (0, 3, 5, 5) for o in outs)
    assert torch.equal(buf, before[0]) and torch.equal(v, before[1]) and torch.equal(mom, before[2])
