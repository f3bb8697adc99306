"""glibc's malloc set for CPU autograd work: two process-wide thresholds, set once, by the trainer and by
`fastat eval` (and the CO atlas's final evaluation), on the CPU only.

Why: a CPU training step allocates its activations (about 6 MB a block for the small CNN at batch 64) and frees
them at its end. With glibc's defaults (a dynamic mmap threshold starting at 128 KB, a trim threshold following it)
that memory goes back to the system after every step, and the next step faults it in again, page by page. A loop
that happens to free one large block early (a plain loop converting its images to float) raises both thresholds and
escapes; fastat keeps uint8 images and never did. Minor page faults of one epoch on the atlas's FGSM-RS cell
(2,000 images, one thread, 2-core x86-64, glibc 2.36; docs/results/yardstick.md §7):

    default              351,500
    mmap threshold only  550,160     (setting either one turns the dynamic threshold off,
    trim threshold only  2,073,300    so one alone is worse than none)
    both                 54,293

bench/trainer_vs_plain.py, training seconds per epoch against the plain loop on glibc's default (median of 4 pairs):
1.23x before this module, 0.99x with it.

Evaluation has the same pattern (every PGD iteration is a forward and an input-gradient backward of a pool of rows).
PGD-50-4 of an ATAS small CNN (ε = 0.1) on 300 test images, one thread, idle 2-core x86-64: 39.1 s and 4,370,059
minor page faults on glibc's default; 31.1 s and 63,226 with both thresholds (1.26x).

Both are set, with ``mallopt`` (``M_MMAP_THRESHOLD`` 64 MiB: a step's blocks come from the heap;
``M_TRIM_THRESHOLD`` 128 MiB: the heap is not handed back between steps); resident memory did not change (536 MB).
They are the values of the environment variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``, which
have the same effect from the start of a process.

Left alone: a process that is not on glibc (macOS, musl) or that preloads another allocator (jemalloc, tcmalloc,
mimalloc); a process whose environment already sets either variable or ``GLIBC_TUNABLES`` (the user chose); and any
process with ``FASTAT_MALLOC=default``. CUDA runs are never touched (their tensors are not malloc's).
"""

from __future__ import annotations

import ctypes
import os
import platform

import torch

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_for"]

MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 128 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
_USER_KNOBS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_done: str | None = None  # what the first call did (the setting is per process: later calls repeat it)


def tune_for(device: torch.device | str) -> str:
    """Set glibc's mmap and trim thresholds for this process (once) when ``device`` is the CPU; returns what was
    done, for run.json and eval.json."""
    global _done
    if torch.device(device).type != "cpu":
        return "not used (CUDA tensors)"
    if _done is None:
        _done = _tune()
    return _done


def _tune() -> str:
    if os.environ.get("FASTAT_MALLOC", "").strip().lower() == "default":
        return "default (FASTAT_MALLOC=default)"
    chosen = [k for k in _USER_KNOBS if k in os.environ]
    if chosen:
        return f"default + the environment's {', '.join(chosen)}"
    preload = os.environ.get("LD_PRELOAD", "")
    other = next((a for a in _OTHER_ALLOCATORS if a in preload), None)
    if other:
        return f"{other} (LD_PRELOAD)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "the platform's (not glibc)"
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and \
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        ok = False
    if not ok:
        return "default (mallopt refused)"
    return f"glibc mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 20} MiB"
