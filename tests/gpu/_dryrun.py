"""Dry runs of the CUDA tests on the CPU, for a machine without a GPU (FASTAT_CUDA_TESTS_ON_CPU):

* `1` (or `cpu`): tests/gpu run against fastat._C's CPU kernels, to catch bugs in the test code itself before a
  (short) GPU session;
* `emu`: tests/gpu run against the CUDA kernels themselves, csrc/cuda/*.cu and the real binding bindings.cpp, on the
  CPU emulator of tests/cuda_emu (`torch.ops.fastat_emu`): every launch path the emulated H100-like device takes, the
  binding's checks, layouts and allocations, the kernels' clamping of index/offsets (the CUDA stream, device guard
  and generator are stand-ins there). Each test runs with the
  emulator's guarded allocator armed (fresh tensors start as NaN, writes outside a tensor fail the test) and fails
  on any kernel fault the emulator reports (tests/gpu/conftest.py). Use FASTAT_CUDA_TEST_SHAPES=sanitizer: the
  full shapes take hours there (about 40 s per 512x3072 case on 2 cores).

In both, DEV = "cpu", and what only exists on a GPU (graphs, streams, events, devices, CUDA generators) is skipped
with `needs_gpu`; what needs the CUDA kernels' own semantics (launch-path choices, clamping instead of raising) is
skipped with `needs_cuda_kernels` in the first mode only. Without the variable nothing changes: these tests skip
without a GPU and run on "cuda" with one.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

_MODES = {"": None, "0": None, "1": "cpu", "cpu": "cpu", "emu": "emu"}
_VALUE = os.environ.get("FASTAT_CUDA_TESTS_ON_CPU", "0").strip().lower()
if _VALUE not in _MODES:
    raise ValueError(f"FASTAT_CUDA_TESTS_ON_CPU={_VALUE!r}: expected 0, 1 (or cpu) or emu")
MODE = _MODES[_VALUE]
ON_CPU = MODE is not None
EMULATED = MODE == "emu"
DEV = "cpu" if ON_CPU else "cuda"
needs_gpu = pytest.mark.skipif(ON_CPU, reason="dry run on CPU: needs the GPU")
needs_cuda_kernels = pytest.mark.skipif(ON_CPU and not EMULATED,
                                        reason="dry run on the CPU kernels: needs the CUDA kernels (a GPU, or "
                                               "FASTAT_CUDA_TESTS_ON_CPU=emu)")

too_slow_to_emulate = pytest.mark.skipif(EMULATED, reason="emulated: tens of thousands of blocks take too long")


@functools.cache  # a skip raises, so it is not cached: every caller skips alike
def emulator():
    """The emulator's kernel library, probed and built once per process; skips the calling module where it cannot be
    built."""
    from cuda_emu import emulator as emu  # tests/ is on sys.path (pytest's rootdir-relative imports)

    problem = emu.toolchain_problem()
    if problem:
        pytest.skip(problem, allow_module_level=True)
    return emu.build()


def ops_under_test():
    """The op namespace the tests call: torch.ops.fastat, or torch.ops.fastat_emu (emulated CUDA kernels)."""
    if EMULATED:
        emulator()
        return torch.ops.fastat_emu
    return torch.ops.fastat


def synchronize() -> None:
    """torch.cuda.synchronize(), a no-op in the dry run (CPU ops are synchronous)."""
    if not ON_CPU:
        torch.cuda.synchronize()


def manual_seed(seed: int) -> None:
    """Seeds DEV's default generator."""
    (torch.manual_seed if ON_CPU else torch.cuda.manual_seed)(seed)
