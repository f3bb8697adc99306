"""`fastat._malloc`: the glibc thresholds the trainer and `fastat eval` set on the CPU — when they are set, when
the process is left alone, and that they do what they are for (a step-sized block stays in the heap, read from
glibc's counters in a process of its own)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from fastat import _malloc

GLIBC_233 = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" and \
    tuple(int(v) for v in platform.libc_ver()[1].split(".")[:2]) >= (2, 33)
_ENV = ("FASTAT_MALLOC", "LD_PRELOAD", *_malloc._USER_KNOBS)  # every variable `_malloc` reads

# Where one step-sized block comes from and where it goes when freed, read from glibc's own counters (mallinfo2):
# 48 MiB is above the largest mmap threshold glibc's dynamic rule ever sets (32 MiB), so on the default every such
# block is a fresh mmap, and below fastat's 64 MiB, so tuned it comes from the heap, which keeps it when freed. (The
# page faults this saves depend on the kernel's transparent huge pages as well; they are measured in `fastat._malloc`'s
# docstring and bench/trainer_vs_plain.py, not asserted here.)
_PROBE = """
import ctypes, json, sys, torch
from fastat import _malloc
done = _malloc.tune_for("cpu") if sys.argv[1] == "tuned" else "default"
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                               "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = Info
before = mallinfo2()
block = torch.empty(48 << 20, dtype=torch.uint8)
during = mallinfo2()
del block
after = mallinfo2()
print(json.dumps({"done": done, "mmapped": during.hblkhd - before.hblkhd, "heap_kept": after.arena - before.arena}))
"""
MIB = 1 << 20


def _probe(mode: str, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in _ENV}, **extra}


@pytest.fixture
def clean(monkeypatch):
    """This process's environment without the variables `_malloc` reads."""
    for var in _ENV:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.skipif(not GLIBC_233, reason="glibc >= 2.33 (mallinfo2)")
def test_a_step_sized_block_stays_in_the_heap():
    default, tuned = _probe("default", _clean_env()), _probe("tuned", _clean_env())
    assert tuned["done"].startswith("glibc mmap threshold 64 MiB")
    # default: mapped for the block and unmapped when it is freed (the next step faults it in again, page by page)
    assert default["mmapped"] >= 48 * MIB and default["heap_kept"] < 48 * MIB
    # tuned: taken from the heap, and the heap keeps it after the free (no trim below 128 MiB)
    assert tuned["mmapped"] == 0 and tuned["heap_kept"] >= 48 * MIB


@pytest.mark.skipif(not GLIBC_233, reason="glibc >= 2.33 (mallinfo2)")
def test_opt_out_leaves_the_default():
    out = _probe("tuned", _clean_env(FASTAT_MALLOC="default"))
    assert out["done"] == "default (FASTAT_MALLOC=default)" and out["mmapped"] >= 48 * MIB


@pytest.mark.parametrize("var", _malloc._USER_KNOBS)
def test_the_users_own_setting_wins(clean, var):
    clean.setenv(var, "1")
    assert _malloc._tune() == f"default + the environment's {var}"


def test_another_allocator_is_left_alone(clean):
    clean.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert _malloc._tune() == "jemalloc (LD_PRELOAD)"


def test_not_glibc_is_left_alone(clean):
    clean.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert _malloc._tune() == "the platform's (not glibc)"


def test_cuda_runs_are_left_alone(clean):
    assert _malloc.tune_for("cuda:0") == "not used (CUDA tensors)"  # their tensors are not malloc's
