"""The emulator reports the bugs it claims to catch (tests/cuda_emu/selftest.cu), and runs correct code right.

Without these, a permissive emulator would let the emulated run of tests/gpu (FASTAT_CUDA_TESTS_ON_CPU=emu) pass
whatever the kernels do."""

from __future__ import annotations

import ctypes
import math
import struct

import pytest
import torch

from . import emulator as emu

pytestmark = pytest.mark.emulated


@pytest.fixture(scope="module")
def lib(emulator_lib):
    emu.configure(emulator_lib)
    return emulator_lib


def _run(lib, which, n=32):
    buf = emu._Guarded(torch.zeros(n))
    err = lib.emu_selftest(which, buf.t.data_ptr(), n)
    emu._check(lib, f"selftest {which}", err)
    return buf.check(f"selftest {which}")


@pytest.mark.parametrize("which,message", [
    (0, r"__syncthreads\(\) at selftest.cu:\d+ while other threads of the block wait at selftest.cu:\d+"),
    (1, r"deadlock: .*1 have exited.*__ballot_sync at selftest.cu:\d+, mask 0xffffffff, has lanes 0xfffffffe"),
    (2, r"__shfl_sync reads a lane outside the mask"),
    (3, r"wrote past the end of its 64 bytes of dynamic shared memory"),
    (4, r"traps.*__trap\(\)"),
    (5, r"wrote outside the buffer"),
    (8, r"launcher returned cudaError 9"),  # cudaErrorInvalidConfiguration: 1025 threads
    (11, r"(__syncthreads\(\) at selftest.cu:\d+ after 16 threads of the block exited"
         r"|exited while \d+ threads of the block wait at the barrier at selftest.cu:\d+)"),
    (12, r"map_shared_rank of an address that is not this block's shared memory"),
])
def test_bug_is_reported(lib, which, message):
    with pytest.raises(emu.EmulatorError, match=message):
        _run(lib, which)
    emu._check(lib, "after", 0)  # the failure was taken: the next launch starts clean


def test_cluster_early_exit_is_reported(lib):
    emu.configure(lib)
    buf = torch.zeros(8)
    with pytest.raises(emu.EmulatorError, match="another block of the cluster failed or exited"):
        emu._check(lib, "cluster", lib.emu_selftest(6, buf.data_ptr(), 1))


def test_cluster_shared_memory_exchange(lib):
    """map_shared_rank reads the right block's copy of a __shared__ variable."""
    emu.configure(lib)
    buf = torch.zeros(8)  # n = 0 selects the exchange kernel
    emu._check(lib, "cluster", lib.emu_selftest(6, buf.data_ptr(), 0))
    # two clusters of 4: block b reads the value of block (rank + 1) % 4 of its own cluster
    want = torch.tensor([100.0 * (c * 4 + (r + 1) % 4) for c in range(2) for r in range(4)])
    assert torch.equal(buf, want)
    assert emu.take_log(lib)[-1] == "cluster_exchange grid=8 block=64 smem=0 cluster=4"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uninitialised_shared_memory_is_garbage(lib, seed):
    """Static __shared__ variables start as 0xFF bytes in every block (NaN as floats), never as 0 or as what the
    previous block or launch left."""
    emu.configure(lib, schedule_seed=seed)
    for _ in range(2):
        assert _run(lib, 10, n=64).isnan().all()
    emu.configure(lib)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_barrier_after_early_exit_is_reported_whatever_the_order(lib, seed):
    emu.configure(lib, schedule_seed=seed)
    with pytest.raises(emu.EmulatorError, match="threads of the block (exited|wait at the barrier)"):
        _run(lib, 11, n=64)
    emu.configure(lib)


def test_warp_shuffles_are_exact(lib):
    out = _run(lib, 7, n=64)
    assert torch.equal(out, torch.tensor([float(sum(range(32)))] * 32 + [float(sum(range(32, 64)))] * 32))


def test_shuffled_schedules_expose_a_missing_barrier(lib):
    """In index order thread 0 writes before the others read, so the bug hides; shuffled orders expose it."""
    emu.configure(lib, schedule_seed=0)
    _run(lib, 9, n=64)
    assert torch.equal(_run(lib, 9, n=64), torch.full((64,), 7.0))
    wrong = 0
    for seed in (1, 2, 3):
        emu.configure(lib, schedule_seed=seed)
        wrong += not torch.equal(_run(lib, 9, n=64), torch.full((64,), 7.0))
    emu.configure(lib)
    assert wrong == 3


def test_float16_and_bfloat16_round_like_torch(lib):
    """The kernels' from_float<T>/to_float on the emulator's fp16/bf16 round like torch's .to(): nearest even,
    overflow to inf, subnormals, NaN."""
    special = [0.0, -0.0, 1.0, 65504.0, 65519.0, 65520.0, 1e-8, 2.9e-8, 3e-8, 6e-8, -3.14159, float("inf"),
               float("-inf"), float("nan"), 3.0e38, -1.17549435e-38, 1.00048828125, 1.0009765625]
    bits = [0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x00000001, 0x807FFFFF, 0x3F800001, 0x477FF000, 0x477FEFFF]
    vals = torch.tensor(special + [struct.unpack("f", struct.pack("I", b))[0] for b in bits])
    vals = torch.cat([vals, torch.randn(5000, generator=torch.Generator().manual_seed(0)) * 10.0 ** torch.randint(
        -9, 6, (5000,), generator=torch.Generator().manual_seed(1))])
    for code, dtype in ((2, torch.float16), (1, torch.bfloat16)):
        out = torch.empty_like(vals)
        lib.emu_round_trip(vals.data_ptr(), out.data_ptr(), vals.numel(), code)
        torch.testing.assert_close(out, vals.to(dtype).float(), rtol=0, atol=0, equal_nan=True,  # +0.0 = -0.0
                                   msg=lambda m, dtype=dtype: f"{dtype}: {m}")


# ------------------------------------------------------------------------ the guarded allocator (torch_shim.cpp)
def test_guarded_allocations_start_as_nan(lib):
    with emu.guarded_allocations(lib):
        t, h, i = torch.empty(37), torch.empty(5, dtype=torch.bfloat16), torch.empty(3, dtype=torch.int32)
    assert t.isnan().all() and h.isnan().all() and (i == -1).all()


def test_guarded_allocations_report_a_write_past_a_tensor_once(lib):
    with pytest.raises(emu.EmulatorError, match=r"wrote outside a 128-byte tensor \(guard bytes changed\)"):
        with emu.guarded_allocations(lib):
            buf = torch.zeros(32)
            lib.emu_selftest(5, buf.data_ptr(), 32)  # one thread too many writes buf[32]
    with emu.guarded_allocations(lib):  # reported: the guards were restored, the next block starts clean
        pass
    del buf
    assert emu.take_problems(lib) == []


def test_guarded_allocations_report_a_write_past_a_freed_tensor(lib):
    """A tensor freed inside the block (the binding's temporaries) is checked when it is freed."""
    with pytest.raises(emu.EmulatorError, match=r"128-byte tensor \(guard bytes changed, seen when it was freed\)"):
        with emu.guarded_allocations(lib):
            buf = torch.zeros(32)
            lib.emu_selftest(5, buf.data_ptr(), 32)
            del buf


def test_guarded_allocations_read_nan_past_a_tensor(lib):
    with emu.guarded_allocations(lib):
        t = torch.zeros(3)
        past = [ctypes.c_float.from_address(t.data_ptr() + 4 * k).value for k in (3, 4, 1000)]
        before = ctypes.c_uint16.from_address(t.data_ptr() - 2).value
    assert all(math.isnan(v) for v in past) and before == 0x7FFF  # NaN as bf16/fp16 too


def test_a_fault_inside_a_guarded_block_is_reported_whatever_the_block_raises(lib):
    """The emulator's failure (here a deadlock) is raised, chained to the block's own exception, and cleared."""
    with pytest.raises(emu.EmulatorError, match="deadlock") as info:
        with emu.guarded_allocations(lib):
            lib.emu_selftest(1, torch.zeros(32).data_ptr(), 32)
            raise ValueError("the binding's argument check")
    assert isinstance(info.value.__context__, ValueError)
    assert emu.take_problems(lib) == []


def test_the_binding_runs_under_the_guards(lib):
    """The ops are csrc/cuda/bindings.cpp's, registered for fastat_emu (not fastat), and their outputs come from the
    guarded allocator: an op that returned an unwritten output would return NaN."""
    assert emu.ops().pgd_step.default.has_kernel_for_dispatch_key("CPU")
    d = torch.zeros(2, 5)
    out = emu.pgd_step(lib, d, torch.ones(2, 5), torch.full((2, 5), 0.5), 0.1, 0.05)
    assert torch.equal(out, torch.full((2, 5), 0.05))
    with pytest.raises(ValueError, match="^fastat.pgd_step: argument 'grad'"):  # checks.h, through the binding
        emu.pgd_step(lib, d, torch.ones(2, 4), d, 0.1, 0.05)
