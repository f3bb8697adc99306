"""Per-example buffers kept in the padded, un-augmented frame (ATAS δ/v, APART ω) and the crop/flip that maps a
buffer row to the augmented image the model sees.

Element (b, c, i, j) of the augmented batch corresponds to buffer[index[b], c, a_b + i, c_b + j'] with
(a_b, c_b) = offsets[b] and j' = W−1−j when flips[b] (the loader's RandomCrop(pad p) + horizontal flip).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..batch import BatchInfo

__all__ = ["crop_params", "buffer_shape", "window_index"]


def crop_params(batch: BatchInfo, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(index, offsets, flips) on x's device: offsets default to the centre (p, p), flips to none."""
    dev, b = x.device, x.shape[0]
    index = batch.index.to(device=dev, dtype=torch.int64)
    if batch.offsets is None:
        offsets = torch.full((b, 2), int(batch.pad), dtype=torch.int64, device=dev)
    else:
        offsets = batch.offsets.to(device=dev, dtype=torch.int64)
    if batch.flips is None:
        flips = torch.zeros(b, dtype=torch.bool, device=dev)
    else:
        flips = batch.flips.to(device=dev, dtype=torch.bool)
    return index, offsets, flips


def buffer_shape(batch: BatchInfo, x: Tensor) -> tuple[int, int, int, int]:
    """(N, C, H+2p, W+2p) for augmented images x of (B, C, H, W)."""
    p = int(batch.pad)
    return (int(batch.num_examples), x.shape[1], x.shape[2] + 2 * p, x.shape[3] + 2 * p)


def window_index(buf: Tensor, index: Tensor, offsets: Tensor, flips: Tensor, height: int,
                 width: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Advanced-indexing tuple: ``buf[t]`` is flip(crop(buf[index])) (B, C, H, W); ``buf[t] = v`` writes v back
    un-flipped into each window (the rest of the row keeps its values). Used for APART's ω, which no op covers."""
    dev = buf.device
    rows = offsets[:, 0:1] + torch.arange(height, device=dev)
    j = torch.arange(width, device=dev)
    cols = offsets[:, 1:2] + torch.where(flips[:, None], width - 1 - j, j)
    chans = torch.arange(buf.shape[1], device=dev)
    return index[:, None, None, None], chans[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]
