"""Where the CUDA tests run: on a GPU, or on the CPU emulator of the CUDA kernels (FASTAT_CUDA_TESTS_ON_CPU).

* unset (or `0`): on a GPU, through torch.ops.fastat on "cuda" tensors; without a GPU every test skips.
* `emu`: the same tests on the CUDA kernels themselves, csrc/cuda/*.cu and the real binding bindings.cpp, built by
  tests/cuda_emu for an emulated H100-like device on the CPU (`torch.ops.fastat_emu`, CPU tensors): every launch path,
  the binding's checks, layouts and allocations, the kernels' clamping of index/offsets (the CUDA stream, device guard
  and generator are stand-ins there). Each test runs with the emulator's guarded allocator armed (fresh tensors start
  as NaN, writes outside a tensor fail the test) and fails on any kernel fault the emulator reports
  (tests/gpu/conftest.py). Use FASTAT_CUDA_TEST_SHAPES=sanitizer: the full shapes take hours there (about 40 s per
  512x3072 case on 2 cores).

What only a GPU has (graphs, streams, events, several devices, CUDA generators) is marked `needs_gpu`; what only the
emulator has (a device configured to take another launch path, the launch log) `emulator_only`. Any other value of
the variable, the old `1` (fastat._C's CPU kernels in place of the CUDA ones) included, is a usage error.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

VARIABLE = "FASTAT_CUDA_TESTS_ON_CPU"


_VALUE = os.environ.get(VARIABLE, "").strip().lower()
EMULATED = _VALUE == "emu"


def mode_error() -> str | None:
    """The one-line error for a value that is no mode (tests/conftest.py stops the run with it), or None."""
    if _VALUE in ("", "0", "emu"):
        return None
    return (f"{VARIABLE}={_VALUE!r} is not a mode: use {VARIABLE}=emu (the CUDA kernels on the CPU emulator), or "
            "leave it unset (a GPU)")


DEV = "cpu" if EMULATED else "cuda"
needs_gpu = pytest.mark.skipif(EMULATED, reason="emulated: needs the GPU")
emulator_only = pytest.mark.skipif(not EMULATED, reason=f"emulator only: configures the emulated device or reads its "
                                                        f"launch log ({VARIABLE}=emu)")
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
    """torch.cuda.synchronize(), a no-op under the emulator (its ops are synchronous)."""
    if not EMULATED:
        torch.cuda.synchronize()


def manual_seed(seed: int) -> None:
    """Seeds DEV's default generator."""
    (torch.manual_seed if EMULATED else torch.cuda.manual_seed)(seed)
