"""The emulator library, built once per session (tests/cuda_emu/emulator.py); the tests skip where the toolchain
cannot build it (no g++, or one without C++20)."""

from __future__ import annotations

import pytest

from . import emulator as emu


@pytest.fixture(scope="session")
def emulator_lib():
    problem = emu.toolchain_problem()
    if problem:
        pytest.skip(problem)
    lib = emu.build()  # a kernel that does not compile here fails the tests
    emu.configure(lib)
    return lib
