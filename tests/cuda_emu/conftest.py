"""The emulator library, built once per session (tests/cuda_emu/emulator.py); skipped where no C++ compiler is."""

from __future__ import annotations

import pytest

from . import emulator as emu


@pytest.fixture(scope="session")
def emulator_lib():
    try:
        lib = emu.build()
    except emu.EmulatorError as e:
        if "no C++ compiler" in str(e):
            pytest.skip(str(e))
        raise
    emu.configure(lib)
    return lib
