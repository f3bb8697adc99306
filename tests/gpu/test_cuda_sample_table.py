"""The OpSpec sample table (python/fastat/ops/_specs.py: SPECS, VARIANTS) through the CUDA kernels, against
fastat.ops.reference: every op, variant (ties, zeros, NaN, bf16/fp16, channels_last, non-contiguous) and op parameter
on small rows (one element, odd lengths, 784, 3072), whatever FASTAT_CUDA_TEST_SHAPES says, and each op once at its
benchmark size (512x3072 rows; 64x150528 = 224x224x3 rows, clusters of 8 for ZeroGrad and ATAS on an H100).

check_sample() is the comparison: exact ops bit for bit (NaN = NaN, +0.0 = -0.0: torch's own reference cannot pin
the sign of a zero), atas_step's outputs within a few ulp (the step size's sqrt/divide) and its v buffer exactly;
buffers an op writes in place are compared as outputs, and every other input must come back untouched. The other
zerograd, atas and random cases are in test_cuda_*_cases.py.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from fastat.ops import reference
from fastat.ops._specs import SPECS, VARIANTS, Sample

from ._dryrun import DEV
from .test_cuda_ops import _cuda_kernels_built  # noqa: F401  (fixture used here)
from .test_cuda_ops import F, _gen, assert_close_atas, assert_exact

pytestmark = pytest.mark.cuda

SHAPES = [(1, 1), (3, 3), (2, 7), (7, 784), (3, 3072)]
OPS = [name for name, spec in SPECS.items() if not spec.random]  # the random ops: test_cuda_{philox,sora_step}.py
BENCHMARK_SIZES = [("zerograd_step", 512, 3072), ("zerograd_step", 64, 150528), ("atas_step", 64, 150528),
                   ("atas_gather", 64, 150528), ("pgd_step", 512, 3072), ("multigrad_step", 128, 3072)]


def _clone_mutated(sample: Sample) -> tuple:
    """The sample's arguments, with fresh copies of the buffers the op writes in place."""
    return tuple(a.clone() if i in sample.mutated else a for i, a in enumerate(sample.args))


def check_sample(op: str, sample: Sample, what: str, kwargs: dict | None = None) -> None:
    """F.<op> on the sample against the reference (see the module's docstring); kwargs replace the sample's."""
    spec, kwargs = SPECS[op], sample.kwargs if kwargs is None else kwargs
    args = _clone_mutated(sample)
    want = (getattr(reference, op)(*args, **kwargs),) + tuple(args[i] for i in sample.mutated)
    snapshot = [a.clone() if isinstance(a, torch.Tensor) else a for a in sample.args]
    args = _clone_mutated(sample)
    got = (getattr(F, op)(*args, **kwargs),) + tuple(args[i] for i in sample.mutated)
    for k, (g, w) in enumerate(zip(got, want)):
        exact = spec.exact or (op == "atas_step" and k == 2)  # v_buf is exact (fp64-accumulated norms)
        (assert_exact if exact else assert_close_atas)(g, w, f"{what} output {k}")
    for i, (before, after) in enumerate(zip(snapshot, sample.args)):
        if isinstance(before, torch.Tensor) and i not in sample.mutated:
            assert_exact(after, before, f"{what}: input {i} was modified")


def _params(op: str) -> list[dict]:
    params = SPECS[op].params or {}
    return [dict(zip(params, values)) for values in itertools.product(*params.values())]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rows,cols", SHAPES, ids=[f"{r}x{c}" for r, c in SHAPES])
@pytest.mark.parametrize("op", OPS)
def test_sample_table_matches_reference(op, rows, cols, variant, poisoned_allocations):
    for params in _params(op):
        sample = SPECS[op].make(rows, cols, variant, _gen(rows, cols), DEV, **params)
        check_sample(op, sample, f"{op} {rows}x{cols} {variant} {params}")


@pytest.mark.slow  # about 50 s in all on 2 emulating cores
@pytest.mark.parametrize("op,rows,cols", BENCHMARK_SIZES, ids=[f"{o}-{r}x{c}" for o, r, c in BENCHMARK_SIZES])
def test_benchmark_sizes(op, rows, cols, emulated, poisoned_allocations):
    if emulated:  # threads in index order: the shuffle costs time here, and the sweep above shuffles
        emulated.configure(schedule_seed=0)
    check_sample(op, SPECS[op].make(rows, cols, "random", _gen(rows, cols), DEV), f"{op} {rows}x{cols}")
