"""Progress bars only where someone watches them: tqdm on a terminal; nothing when stderr is a file or a pipe (a log,
CI, a sweep's output), where tqdm's carriage-return frames pile up as hundreds of lines per epoch and the trainer's
one line per epoch is the progress."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["interactive", "progress_bar"]


def interactive() -> bool:
    """Whether stderr (where tqdm draws) is a terminal."""
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(iterable: Any = None, *, enabled: bool = True, **kw: Any):
    """``tqdm(iterable, **kw)``, disabled unless ``enabled`` and stderr is a terminal."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not (enabled and interactive()), **kw)
