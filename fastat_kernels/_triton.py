"""The only module that imports triton. Everything else asks here whether Triton can run and why not.

`TRITON_INTERPRET=1` must be set before triton is first imported; then kernels run on CPU tensors (slowly, in numpy),
which is how CI tests them on machines without a GPU.
"""

from __future__ import annotations

import functools
import os


@functools.cache
def import_error() -> str | None:
    """None when triton imports, else the reason it does not."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"triton is not importable ({type(exc).__name__}: {exc})"
    return None


def interpret() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in {"1", "true", "on", "yes"}


def autotune_enabled() -> bool:
    """Autotuning is off under the interpreter and when FASTAT_TRITON_AUTOTUNE=0 (tests)."""
    return not interpret() and os.environ.get("FASTAT_TRITON_AUTOTUNE", "1") != "0"
