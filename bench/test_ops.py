"""pytest-benchmark view of the op benchmarks: `pytest bench/test_ops.py --benchmark-only [--benchmark-json out.json]`.

One benchmark per op x backend x shape (the torch reference included, so ratios come from the same run). On CUDA each
round launches the op K times and synchronizes once, so the host timer does not dominate 10-µs kernels; the reported
time is per launch. For the table with GB/s and the copy floor, use `fastat bench ops`.
"""

from __future__ import annotations

import pytest
import torch

from fastat.benchmark import CPU_SHAPES, CUDA_SHAPES
from fastat.ops import _dispatch
from fastat.ops._schemas import HOT_PATHS
from fastat.ops._specs import SPECS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = CUDA_SHAPES if DEVICE == "cuda" else CPU_SHAPES
LAUNCHES_PER_ROUND = 20


@pytest.mark.parametrize("backend", _dispatch.BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", HOT_PATHS)
def test_op(benchmark, op, shape, backend):
    reasons = _dispatch.not_supported_reasons(backend, op, DEVICE)
    if reasons:
        pytest.skip("; ".join(reasons))
    sample = SPECS[op].make(*shape, "random", torch.Generator(DEVICE).manual_seed(0), DEVICE)
    impl = _dispatch.implementation(backend, op)
    benchmark.group = f"{op} {shape[0]}x{shape[1]}"
    if DEVICE == "cuda":
        def run():
            for _ in range(LAUNCHES_PER_ROUND):
                impl(*sample.args, **sample.kwargs)
            torch.cuda.synchronize()

        run()
        benchmark.pedantic(run, rounds=50, warmup_rounds=2)
        benchmark.extra_info["launches_per_round"] = LAUNCHES_PER_ROUND
    else:
        benchmark(impl, *sample.args, **sample.kwargs)
