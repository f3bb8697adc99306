"""IDX files (the MNIST / Fashion-MNIST format), read with numpy and gzip only.

Layout: magic = 0x00 0x00 <type> <ndim>, then ndim big-endian uint32 sizes, then the data in C order.
Type 0x08 is unsigned byte, the only type these datasets use (images: ndim 3, magic 0x803; labels: ndim 1, 0x801).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
           0x0E: np.dtype(">f8")}


class IDXError(ValueError):
    """An IDX file is malformed, truncated or of the wrong kind."""


def read_idx(path: str | os.PathLike, *, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array, checking the magic number and the size.

    Args:
        path: the file.
        ndim: the expected number of dimensions (3 for images, 1 for labels), or None to accept any.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise IDXError(f"{path}: cannot read IDX file: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IDXError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    type_code, nd = raw[2], raw[3]
    if type_code not in _DTYPES:
        raise IDXError(f"{path}: unknown IDX data type 0x{type_code:02x}")
    if ndim is not None and nd != ndim:
        raise IDXError(f"{path}: expected an IDX file with {ndim} dimension(s) "
                       f"(magic 0x{0x800 + ndim:03x}), got {nd} (magic 0x{type_code << 8 | nd:03x})")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise IDXError(f"{path}: truncated IDX header")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=nd, offset=4))
    dtype = np.dtype(_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IDXError(f"{path}: IDX data has {len(raw) - header} bytes, the header {shape} implies {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip-compressed when the name ends in .gz); used to make test fixtures."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())
