"""Under FASTAT_CUDA_TESTS_ON_CPU=emu (see _dryrun.py), each test of tests/gpu runs on a fresh emulated H100-like
device with a shuffled thread schedule (a seed per test), with the guarded CPU allocator armed (new tensors start as
NaN, writes outside a tensor are reported), and fails on any kernel fault the emulator recorded."""

from __future__ import annotations

import warnings
import zlib

import pytest

from ._dryrun import EMULATED, emulator


@pytest.fixture(autouse=True)
def _emulated_device(request):
    if not EMULATED:
        yield
        return
    from cuda_emu import emulator as emu

    lib = emulator()
    leftovers = emu.take_problems(lib)  # e.g. a tensor a failed test's traceback kept alive, freed only now
    if leftovers:
        warnings.warn(f"emulator problems from before {request.node.nodeid}: {'; '.join(leftovers)}", stacklevel=1)
    emu.configure(lib, schedule_seed=zlib.crc32(request.node.nodeid.encode()) % 100_000 + 1)
    emu.take_log(lib)
    with emu.guarded_allocations(lib, request.node.nodeid):
        yield
    emu.configure(lib)
