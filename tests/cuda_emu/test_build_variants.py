"""The emulated run of the CUDA tests (FASTAT_CUDA_TESTS_ON_CPU=emu pytest -m cuda tests/gpu, small shapes) again, in
a child process, with the emulator built under AddressSanitizer (FASTAT_EMU_ASAN=1, libasan preloaded; the interpreter
itself is not instrumented), the CPU counterpart of compute-sanitizer's memcheck: any read or write of a kernel outside
the tensors it was given, or past the dynamic shared memory it was launched with, aborts the child with a report.

FMA contraction needs no build of its own: the emulator contracts a*b+c by default where the CPU has FMA, as nvcc does
(`emulator.contract_enabled`), so every emulated test already checks that no exact op depends on an unprotected
product-sum (one not written with __fmul_rn/__fadd_rn/__fmaf_rn); `test_the_default_build_contracts_like_nvcc` checks
that default.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from . import emulator as emu

pytestmark = [pytest.mark.emulated, pytest.mark.slow]
sanitizer = pytest.mark.sanitizer  # `./run.sh test` runs these in their own process, beside the emulated run

GPU_TESTS = str(emu.ROOT / "tests" / "gpu")
EMULATED = {"FASTAT_CUDA_TESTS_ON_CPU": "emu", "FASTAT_CUDA_TEST_SHAPES": "sanitizer"}


def _asan_env():
    cxx = os.environ.get("CXX", "g++")
    try:
        lib = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    except OSError:
        lib = ""
    if not lib or not os.path.isabs(lib) or not os.path.exists(lib):
        pytest.skip(f"no libasan for {cxx}")
    return dict(os.environ, **EMULATED, FASTAT_EMU_ASAN="1", LD_PRELOAD=lib,
                ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:detect_stack_use_after_return=0")


@pytest.fixture(autouse=True)
def _toolchain():
    problem = emu.toolchain_problem()
    if problem:
        pytest.skip(problem)


def _run(args, env, timeout=1800):
    return subprocess.run([sys.executable, *args], env=env, cwd=emu.ROOT, capture_output=True, text=True,
                          timeout=timeout)


# The kernel-case files (launch paths, the sample table, the per-op edge values, random cases, Philox), which drive
# every kernel through its paths, and the wild-index test (memory safety by construction). The rest of
# test_cuda_ops.py and test_cuda_edge_cases.py exercise the binding's checks and the torch integration (opcheck,
# graphs, streams) on the same kernels; under AddressSanitizer they added about 10 minutes to CI on 2 cores and no
# kernel path the files below do not take.
ASAN_FILES = ("test_emulated_launch_paths.py", "test_cuda_sample_table.py", "test_cuda_zerograd_cases.py",
              "test_cuda_atas_cases.py", "test_cuda_random_cases.py", "test_cuda_philox.py",
              "test_cuda_ops.py::test_out_of_range_index_and_offsets_are_clamped_never_crash")


@sanitizer
def test_kernels_under_address_sanitizer():
    # the kernel-case files but the benchmark sizes, and of the sample-table sweep only two variants (memory safety
    # does not depend on the values: the other variants take the same paths), to keep CI short
    keep = "not benchmark_sizes and (not test_sample_table_matches_reference or random or channels_last)"
    files = [os.path.join(GPU_TESTS, name) for name in ASAN_FILES]
    res = _run(["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "cuda", "-k", keep, *files],
               _asan_env())
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "AddressSanitizer" not in out, out[-6000:]


_OOB = """
import torch
from tests.cuda_emu import emulator as emu
lib = emu.build()
emu.configure(lib)
buf = torch.zeros(784)
lib.emu_selftest(13, buf.data_ptr(), 784)  # selftest.cu's global_overread: 2 threads read past the tensor's end
print("no report")
"""


@sanitizer
def test_address_sanitizer_reports_an_out_of_bounds_read():
    res = _run(["-c", _OOB], _asan_env(), timeout=600)
    assert "heap-buffer-overflow" in res.stderr and "READ of size 4" in res.stderr and "global_overread" in res.stderr
    assert "no report" not in res.stdout


def test_the_default_build_contracts_like_nvcc(monkeypatch):
    """The emulated run is the FMA-contraction check (see the module docstring): on a CPU with FMA instructions the
    default build fuses a*b+c as nvcc does; FASTAT_EMU_CONTRACT=0 turns it off, =1 on."""
    monkeypatch.delenv("FASTAT_EMU_CONTRACT", raising=False)
    if not emu.cpu_has_fma():
        pytest.skip("this CPU has no FMA instructions: the default build cannot contract")
    assert emu.contract_enabled() and {"-ffp-contract=fast", "-mfma"} <= set(emu._flags())
    monkeypatch.setenv("FASTAT_EMU_CONTRACT", "0")
    assert not emu.contract_enabled() and "-ffp-contract=off" in emu._flags()
    monkeypatch.setenv("FASTAT_EMU_CONTRACT", "1")
    assert emu.contract_enabled()
