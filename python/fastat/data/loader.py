"""A device-resident loader: uint8 images on the target device, shuffling and crop/flip done there, no workers.

Each batch is ``(x, y, info)``: x float in [0, 1] of shape (B, C, H, W), y int64 (B,), and a `fastat.batch.BatchInfo`
with the sampled dataset indices, crop offsets and flips, so per-example buffers kept in the padded, un-augmented frame
(ATAS δ and v, APART ω) follow the same augmentation. The crop/flip is one vectorised gather with the mapping of
`fastat.ops.atas_gather`:

    x[b, c, i, j] = padded[index[b], c, off[b, 0] + i, off[b, 1] + j'],   j' = W − 1 − j if flips[b] else j,

where ``padded`` is the image zero-padded by ``pad`` on each side (RandomCrop(H, padding=pad) + horizontal flip).

Randomness comes from one CPU ``torch.Generator`` seeded with ``seed``: at the start of each epoch it draws the
permutation, the offsets and the flips of the whole epoch, so the stream is the same on every device and an epoch can
be resumed at any batch from ``state_dict()`` (the generator state at the epoch start, the epoch and the position).

Several processes (``world_size`` > 1, torchrun): every rank draws the same epoch and takes its contiguous share of
each *global* batch of ``batch_size`` samples (`fastat.distributed.shard_range`), so the ranks together see exactly
the batches one process would, with no padding or repeated samples (unlike ``DistributedSampler``'s default), and
the state is the same on every rank. A last global batch with fewer samples than ranks is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..batch import BatchInfo

PAD_MODES = ("zero", "reflect")


class DeviceLoader:
    """Iterate over (x, y, BatchInfo) batches of a whole uint8 dataset kept on ``device``.

    Args:
        images: (N, C, H, W) uint8 (any device; copied to ``device`` once).
        labels: (N,) integer labels.
        batch_size: samples per batch.
        device: where batches live (default: the images' device).
        shuffle: a new random order each epoch (False: dataset order).
        pad: crop padding p; 0 disables the random crop (offsets None in BatchInfo).
        flip: random horizontal flips with probability 1/2.
        pad_mode: "zero" (torchvision RandomCrop, WONG/ATAS) or "reflect" (the ZeroGrad CIFAR-10 loader); BatchInfo
            always describes the crop window, whatever fills the border.
        drop_last: drop the last incomplete batch.
        subset: an int n (the first n examples) or a sequence/tensor of example indices; BatchInfo.index then counts
            within the subset (0..n−1) and ``source_index`` maps back to the dataset.
        seed: seeds the generator.
        rank, world_size: this process's share of every global batch (see the module docstring).
    """

    def __init__(self, images: Tensor, labels: Tensor, *, batch_size: int, device: str | torch.device | None = None,
                 shuffle: bool = True, pad: int = 0, flip: bool = False, pad_mode: str = "zero",
                 drop_last: bool = False, subset: int | Sequence[int] | Tensor | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("DeviceLoader: argument 'images' must be a (N, C, H, W) uint8 tensor")
        if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"DeviceLoader: argument 'labels' must be a ({images.shape[0]},) tensor")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"DeviceLoader: argument 'pad_mode' must be one of {PAD_MODES}, got {pad_mode!r}")
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ValueError(f"DeviceLoader: argument 'pad' must be an int >= 0, got {pad!r}")
        device = torch.device(device) if device is not None else images.device
        self.source_index = _subset_indices(subset, images.shape[0])
        n = int(self.source_index.shape[0])
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"DeviceLoader: argument 'batch_size' must be a positive int, got {batch_size!r}")
        if batch_size > n:
            raise ValueError(f"DeviceLoader: argument 'batch_size' ({batch_size}) is larger than the dataset ({n})")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"DeviceLoader: argument 'world_size' must be a positive int, got {world_size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"DeviceLoader: argument 'rank' must be an int in [0, {world_size}), got {rank!r}")
        if batch_size < world_size:
            raise ValueError(f"DeviceLoader: argument 'batch_size' ({batch_size}) must be >= 'world_size' "
                             f"({world_size}): it is the global batch, shared by the ranks")
        self.rank, self.world_size = rank, world_size
        self.device, self.batch_size, self.shuffle = device, batch_size, bool(shuffle)
        self.pad, self.flip, self.pad_mode, self.drop_last = pad, bool(flip), pad_mode, bool(drop_last)
        self.num_examples = n
        self.image_size = (int(images.shape[2]), int(images.shape[3]))
        src = images[self.source_index.to(images.device)] if subset is not None else images
        self._frames = _pad_frames(src.to(device), pad, pad_mode)
        self._labels = labels[self.source_index.to(labels.device)].to(device=device, dtype=torch.int64) \
            if subset is not None else labels.to(device=device, dtype=torch.int64)
        self.seed = int(seed)
        self._gen = torch.Generator().manual_seed(self.seed)
        self.epoch = 1
        self._position = 0
        self._epoch_rng: Tensor | None = None

    def __len__(self) -> int:
        full, rest = divmod(self.num_examples, self.batch_size)
        return full + (1 if rest >= self.world_size and not self.drop_last else 0)

    # ------------------------------------------------------------------------------------------------ iteration

    def _draw_epoch(self) -> tuple[Tensor, Tensor | None, Tensor | None]:
        n, g = self.num_examples, self._gen
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g) if self.pad > 0 else None
        flips = torch.randint(0, 2, (n,), generator=g).bool() if self.flip else None
        move = lambda t: None if t is None else t.to(self.device, non_blocking=True)  # noqa: E731
        return move(order), move(offsets), move(flips)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, BatchInfo]]:
        """One epoch (or the rest of one: iterating again after a break, or after `load_state_dict`, resumes it)."""
        if self._epoch_rng is None:
            self._epoch_rng = self._gen.get_state()
        else:
            self._gen.set_state(self._epoch_rng)
        order, offsets, flips = self._draw_epoch()
        for b in range(self._position, len(self)):
            start, stop = b * self.batch_size, min((b + 1) * self.batch_size, self.num_examples)
            global_batch = stop - start
            if self.world_size > 1:
                from ..distributed import shard_range

                lo, hi = shard_range(global_batch, self.rank, self.world_size)
                start, stop = start + lo, start + hi
            sl = slice(start, stop)
            off = None if offsets is None else offsets[sl]
            flp = None if flips is None else flips[sl]
            x, y, index = self.gather(order[sl], off, flp)
            info = BatchInfo(index=index, num_examples=self.num_examples, pad=self.pad, offsets=off, flips=flp,
                             epoch=self.epoch, global_batch=global_batch)
            self._position = b + 1
            yield x, y, info
        self.epoch += 1
        self._position = 0
        self._epoch_rng = None

    def gather(self, index: Tensor, offsets: Tensor | None = None, flips: Tensor | None = None
               ) -> tuple[Tensor, Tensor, Tensor]:
        """Augmented images (float in [0, 1]), labels and the index itself, for given dataset indices and transforms."""
        index = index.to(self.device)
        h, w = self.image_size
        if offsets is None and flips is None:
            frames = self._frames[index]
            if self.pad > 0:  # no crop requested: the centre window
                frames = frames[:, :, self.pad:self.pad + h, self.pad:self.pad + w]
            x = frames
        else:
            b = index.shape[0]
            if offsets is None:
                offsets = torch.full((b, 2), self.pad, dtype=torch.int64, device=self.device)
            rows = offsets[:, :1] + torch.arange(h, device=self.device)                 # (B, H)
            cols = torch.arange(w, device=self.device).expand(b, w)
            if flips is not None:
                cols = torch.where(flips[:, None], (w - 1) - cols, cols)
            cols = offsets[:, 1:] + cols                                                   # (B, W)
            chan = torch.arange(self._frames.shape[1], device=self.device)
            x = self._frames[index[:, None, None, None], chan[None, :, None, None], rows[:, None, :, None],
                             cols[:, None, None, :]]
        return x.float().div_(255.0), self._labels[index], index

    # ------------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Epoch, position within it, and the generator state at its start (restoring replays the same batches)."""
        rng = self._epoch_rng if self._epoch_rng is not None else self._gen.get_state()
        return {"epoch": self.epoch, "position": self._position, "rng_state": rng.clone(), "seed": self.seed,
                "num_examples": self.num_examples, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("num_examples", self.num_examples) != self.num_examples or \
                state.get("batch_size", self.batch_size) != self.batch_size:
            raise ValueError(f"DeviceLoader.load_state_dict: state is for {state.get('num_examples')} examples in "
                             f"batches of {state.get('batch_size')}, this loader has {self.num_examples} in "
                             f"batches of {self.batch_size}")
        self.epoch = int(state["epoch"])
        self._position = int(state["position"])
        self.seed = int(state.get("seed", self.seed))
        self._epoch_rng = state["rng_state"].clone()
        self._gen.set_state(self._epoch_rng)


def _subset_indices(subset: int | Sequence[int] | Tensor | None, n: int) -> Tensor:
    if subset is None:
        return torch.arange(n)
    if isinstance(subset, int) and not isinstance(subset, bool):
        if not 1 <= subset <= n:
            raise ValueError(f"DeviceLoader: argument 'subset' must be in [1, {n}], got {subset}")
        return torch.arange(subset)
    idx = torch.as_tensor(subset, dtype=torch.int64).flatten().cpu()
    if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= n:
        raise ValueError(f"DeviceLoader: argument 'subset' must hold indices in [0, {n})")
    if torch.unique(idx).numel() != idx.numel():
        raise ValueError("DeviceLoader: argument 'subset' must not repeat an index")
    return idx


def _pad_frames(images: Tensor, pad: int, mode: str) -> Tensor:
    if pad == 0:
        return images.contiguous()
    if mode == "zero":
        return F.pad(images, (pad, pad, pad, pad)).contiguous()
    out = torch.empty(images.shape[:2] + (images.shape[2] + 2 * pad, images.shape[3] + 2 * pad), dtype=torch.uint8,
                      device=images.device)
    for s in range(0, images.shape[0], 4096):  # reflect padding needs a float tensor; chunk to bound memory
        out[s:s + 4096] = F.pad(images[s:s + 4096].float(), (pad, pad, pad, pad), mode="reflect").to(torch.uint8)
    return out
