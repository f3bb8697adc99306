"""Dry run of the CUDA tests on the CPU: FASTAT_CUDA_TESTS_ON_CPU=1 runs tests/cuda against the CPU kernels.

Meant for a machine without a GPU, to catch bugs in the test code itself before a (short) GPU session: the same tests
run with DEV = "cpu" against fastat._C's CPU kernels, and what only exists on a GPU (graphs, streams, events, devices,
CUDA generators, launch-path choices, CUDA-only behaviour) is skipped with `needs_gpu`. Without the variable nothing
changes: these tests skip without a GPU and run on "cuda" with one.
"""

from __future__ import annotations

import os

import pytest
import torch

ON_CPU = os.environ.get("FASTAT_CUDA_TESTS_ON_CPU", "0") == "1"
DEV = "cpu" if ON_CPU else "cuda"
needs_gpu = pytest.mark.skipif(ON_CPU, reason="dry run on CPU: needs the GPU")


def synchronize() -> None:
    """torch.cuda.synchronize(), a no-op in the dry run (CPU ops are synchronous)."""
    if not ON_CPU:
        torch.cuda.synchronize()


def manual_seed(seed: int) -> None:
    """Seeds DEV's default generator."""
    (torch.manual_seed if ON_CPU else torch.cuda.manual_seed)(seed)
