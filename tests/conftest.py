"""Shared fixtures and markers.

* `cuda` tests are skipped without a GPU, except those under tests/gpu with FASTAT_CUDA_TESTS_ON_CPU=emu: the CUDA
  kernels on the CPU emulator (tests/gpu/_dryrun.py, which also refuses any other value of the variable).
* `triton` tests run in their own process with TRITON_INTERPRET=1 on CPU (the variable must be set before triton is
  imported): `TRITON_INTERPRET=1 pytest -m triton tests/ops`. Without it and without a GPU they are skipped.
* `--subset` runs a representative slice of the big parametrized sweeps for quick local loops.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--subset", action="store_true", help="run a small representative subset of the op sweeps")


def pytest_configure(config):
    from gpu._dryrun import mode_error

    error = mode_error()
    if error:  # e.g. the old FASTAT_CUDA_TESTS_ON_CPU=1
        raise pytest.UsageError(error)


def pytest_collection_modifyitems(config, items):
    from gpu._dryrun import EMULATED

    has_cuda = torch.cuda.is_available()
    emulated_dir = Path(__file__).parent / "gpu" if EMULATED else None
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_triton = pytest.mark.skip(reason="needs a CUDA GPU or TRITON_INTERPRET=1 (run in a separate process)")
    for item in items:
        # the markers, not item.keywords: those also hold parameter ids, and a case named "cuda" is not a GPU test
        if item.get_closest_marker("cuda") and not has_cuda and emulated_dir not in Path(item.path).parents:
            item.add_marker(skip_cuda)
        if item.get_closest_marker("triton") and not (has_cuda or interpret):
            item.add_marker(skip_triton)


@pytest.fixture(autouse=True)
def _seed_and_backend():
    """Every test starts from the same RNG state and from the "auto" backend, whatever the previous test did."""
    import fastat

    torch.manual_seed(0)
    previous = fastat.ops.get_backend()
    fastat.ops.set_backend("auto")
    yield
    fastat.ops.set_backend(previous)


@pytest.fixture
def poisoned_allocations():
    """Fill every fresh allocation with NaN (floats) / max ints, so an op that forgets to write an element fails."""
    det, fill = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(det)
    torch.utils.deterministic.fill_uninitialized_memory = fill


@pytest.fixture
def one_thread():
    """Tiny CPU models run fastest single-threaded (intra-op threads cost more than they give, and the CPU is
    shared with other processes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
