"""Checks on output paths, done before long work so that it never ends in a path error."""

from __future__ import annotations

import tempfile
from pathlib import Path

__all__ = ["check_writable_folder"]


def check_writable_folder(folder: Path) -> None:
    """Raise OSError (its ``strerror`` says why) unless ``folder`` is, or could be created as, a folder files can be
    written into. Creates nothing: the nearest existing ancestor must be a folder that takes a temporary file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(20, f"{str(folder)!r} is a file, not a folder")
    where = folder
    while not where.exists():
        where = where.parent
    if not where.is_dir():
        raise NotADirectoryError(20, f"{str(where)!r} is a file, not a folder")
    with tempfile.TemporaryFile(dir=where):
        pass
