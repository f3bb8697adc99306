"""Whether Triton can run, and how: the package's `__init__` asks here and never imports triton itself.

Triton is imported only when `import_error` is called (the op modules and `_common` import it directly).

`TRITON_INTERPRET=1` must be set before triton is first imported; then kernels run on CPU tensors (slowly, in numpy),
which is how CI tests them on machines without a GPU.
"""

from __future__ import annotations

import os

_IMPORT_ERROR: dict[str, str | None] = {}  # a plain dict, not functools.cache: torch.compile traces this call


def import_error() -> str | None:
    """None when triton imports, else the reason it does not."""
    if "triton" not in _IMPORT_ERROR:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401

            _IMPORT_ERROR["triton"] = None
        except Exception as exc:  # ImportError, or a broken install
            _IMPORT_ERROR["triton"] = f"triton is not importable ({type(exc).__name__}: {exc})"
    return _IMPORT_ERROR["triton"]


def interpret() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in {"1", "true", "on", "yes"}


def autotune_enabled() -> bool:
    """Autotuning is off under the interpreter and when FASTAT_TRITON_AUTOTUNE=0 (tests)."""
    return not interpret() and os.environ.get("FASTAT_TRITON_AUTOTUNE", "1") != "0"
