"""Under FASTAT_CUDA_TESTS_ON_CPU=emu (see _dryrun.py), each test of tests/gpu runs on a fresh emulated H100-like
device with a shuffled thread schedule (a seed per test), with the guarded CPU allocator armed (new tensors start as
NaN, writes outside a tensor are reported), and fails on any kernel fault the emulator recorded.

Fixtures: `emulated`, that device (an EmulatedDevice) or None on a GPU, for a test that runs on both and only adds
device settings under the emulator; `emulated_device`, the same for a test that makes sense on the emulator only (it
skips on a GPU)."""

from __future__ import annotations

import warnings
import zlib

import pytest

from ._dryrun import EMULATED, emulator, emulator_only


class EmulatedDevice:
    """The emulated device of one test: what it answers (emulator.configure's settings) and what it launched."""

    def __init__(self, lib, seed: int):
        self.lib, self.seed = lib, seed

    def configure(self, **settings) -> None:
        """emulator.configure(**settings) (an H100 for what is not given), keeping the test's schedule seed unless
        `schedule_seed` is given (0: threads in index order, faster for big launches)."""
        from cuda_emu import emulator as emu

        emu.configure(self.lib, **{"schedule_seed": self.seed, **settings})

    def log(self) -> list[str]:
        """The launches since the last call: 'kernel<...> grid=G block=T smem=S cluster=K' lines, each maybe followed
        by indented notes."""
        from cuda_emu import emulator as emu

        return emu.take_log(self.lib)

    def launches(self) -> list[str]:
        """The launch lines of log(), without the notes."""
        return [line for line in self.log() if not line.startswith(" ")]

    def kernels(self) -> list[str]:
        """The kernels launched since the last call, in order, as 'kernel<template arguments>'."""
        return [line.split(" grid=")[0] for line in self.launches()]


@pytest.fixture(autouse=True)
def emulated(request):
    """The test's emulated device, set up as above (None on a GPU)."""
    if not EMULATED:
        yield None
        return
    from cuda_emu import emulator as emu

    lib = emulator()
    leftovers = emu.take_problems(lib)  # e.g. a tensor a failed test's traceback kept alive, freed only now
    if leftovers:
        warnings.warn(f"emulator problems from before {request.node.nodeid}: {'; '.join(leftovers)}", stacklevel=1)
    device = EmulatedDevice(lib, zlib.crc32(request.node.nodeid.encode()) % 100_000 + 1)
    device.configure()
    device.log()
    with emu.guarded_allocations(lib, request.node.nodeid):
        yield device
    emu.configure(lib)


@pytest.fixture
def emulated_device(emulated):
    """The emulated device; a test that asks for it skips on a GPU (it configures the device or reads its log)."""
    if emulated is None:
        pytest.skip(emulator_only.kwargs["reason"])
    return emulated
