"""The emulated CUDA kernels under AddressSanitizer: the CPU counterpart of compute-sanitizer's memcheck.

The kernel tests run again in a child process with the emulator built with -fsanitize=address (FASTAT_EMU_ASAN=1)
and libasan preloaded (the interpreter itself is not instrumented): any read or write of a kernel outside the
tensors it was given, or past the dynamic shared memory it was launched with, aborts the child with a report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from . import emulator as emu

pytestmark = [pytest.mark.emulated, pytest.mark.slow]

HERE = Path(__file__).resolve().parent


def _asan_env():
    cxx = os.environ.get("CXX", "g++")
    try:
        lib = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    except OSError:
        lib = ""
    if not lib or not os.path.isabs(lib) or not os.path.exists(lib):
        pytest.skip(f"no libasan for {cxx}")
    return dict(os.environ, FASTAT_EMU_ASAN="1", LD_PRELOAD=lib,
                ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:detect_stack_use_after_return=0")


def _run(args, env, timeout=1800):
    return subprocess.run([sys.executable, *args], env=env, cwd=emu.ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_kernels_under_address_sanitizer():
    res = _run(["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not full_sizes",
                str(HERE / "test_emulated_kernels.py")], _asan_env())
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "AddressSanitizer" not in out, out[-6000:]


_OOB = """
import torch
from tests.cuda_emu import emulator as emu
lib = emu.build()
emu.configure(lib)
d, g, x, out = torch.zeros(2, 784), torch.ones(2, 784), torch.full((2, 784), 0.5), torch.empty(2, 800)
# rows claimed 2 elements longer than the tensors: the kernel's last reads are past the end of delta/grad/x
lib.emu_pgd_step(d.data_ptr(), g.data_ptr(), x.data_ptr(), None, out.data_ptr(), 0, 0, 2, 786, 0.1, 0.2)
print("no report")
"""


def test_address_sanitizer_reports_an_out_of_bounds_read():
    res = _run(["-c", _OOB], _asan_env(), timeout=600)
    assert "heap-buffer-overflow" in res.stderr and "READ of size 4" in res.stderr and "pgd_step_kernel" in res.stderr
    assert "no report" not in res.stdout
