"""What a training batch carries besides (x, y): dataset indices and the augmentation that produced x.

The data loader samples crop offsets and flips on the device and returns them, so per-example state kept in the
padded, un-augmented frame (ATAS δ/v buffers, APART ω) follows exactly the same crop and flip as the image.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class BatchInfo:
    """Per-batch metadata passed to ``Method.perturb``.

    Attributes:
        index: (B,) int64 dataset indices of the samples (unique within a batch).
        num_examples: N, the size of the dataset the indices point into (sizes per-example buffers).
        pad: p, the padding of the frame crops are taken from (0: no crop augmentation).
        offsets: (B, 2) int64 crop corners (row, col) in [0, 2p], or None when there is no crop.
        flips: (B,) bool horizontal flips, or None when there is no flip.
        epoch: the current epoch, counted from 1.
        global_batch: samples in the whole batch across processes when several (torchrun) share it; None (or B)
            when this process has it all. Methods whose attack depends on the 1/B of the batch-mean loss (ATAS)
            use it so a step is the same on 1 or N processes.
    """

    index: Tensor
    num_examples: int
    pad: int = 0
    offsets: Tensor | None = None
    flips: Tensor | None = None
    epoch: int = 1
    global_batch: int | None = None
