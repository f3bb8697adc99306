"""The emulated run of the CUDA tests (FASTAT_CUDA_TESTS_ON_CPU=emu pytest -m cuda tests/gpu, small shapes) again, in
child processes, with the emulator built two other ways.

* AddressSanitizer (FASTAT_EMU_ASAN=1, libasan preloaded; the interpreter itself is not instrumented), the CPU
  counterpart of compute-sanitizer's memcheck: any read or write of a kernel outside the tensors it was given, or past
  the dynamic shared memory it was launched with, aborts the child with a report.
* FMA contraction (FASTAT_EMU_CONTRACT=1: -ffp-contract=fast -mfma), as nvcc contracts a*b+c by default: an exact op
  whose result depends on an unprotected product-sum (one not written with __fmul_rn/__fadd_rn/__fmaf_rn) would
  then differ from the reference.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from . import emulator as emu

pytestmark = [pytest.mark.emulated, pytest.mark.slow]

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


def test_address_sanitizer_reports_an_out_of_bounds_read():
    res = _run(["-c", _OOB], _asan_env(), timeout=600)
    assert "heap-buffer-overflow" in res.stderr and "READ of size 4" in res.stderr and "global_overread" in res.stderr
    assert "no report" not in res.stdout


def _has_fma() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " fma " in f" {line.split(':', 1)[1]} " for line in f)
    except OSError:
        return False


def test_kernels_with_fma_contraction():
    if not _has_fma():
        pytest.skip("this CPU has no FMA instructions")
    env = dict(os.environ, **EMULATED, FASTAT_EMU_CONTRACT="1")
    # the exact ops' value tests (the path and bookkeeping tests do not depend on rounding)
    keep = "matches_reference or random_cases or quantiles or ties or inf or one_half or philox or grid_stride"
    res = _run(["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "cuda and not slow", "-k", keep,
                GPU_TESTS], env)
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
