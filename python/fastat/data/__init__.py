"""Data for fastat: whole-dataset uint8 tensors (`load_dataset`) and a device-resident loader (`DeviceLoader`).

    ds = load_dataset("fashion-mnist", split="train")           # embedded copy, no torchvision needed
    loader = make_loader(ds, batch_size=512, device="cuda", train=True, seed=0)
    for x, y, info in loader:                                    # x in [0, 1], info: fastat.batch.BatchInfo
        ...
"""

from __future__ import annotations

import torch

from ..batch import BatchInfo
from .datasets import (FASHION_MNIST_ROOT, NAMES, SPECS, DatasetSpec, ImageDataset, canonical_name, load_dataset,
                       load_dataset_cached)
from .idx import IDXError, read_idx, write_idx
from .loader import DeviceLoader

__all__ = [
    "BatchInfo",
    "DatasetSpec",
    "DeviceLoader",
    "FASHION_MNIST_ROOT",
    "IDXError",
    "ImageDataset",
    "NAMES",
    "SPECS",
    "canonical_name",
    "load_dataset",
    "load_dataset_cached",
    "make_loader",
    "read_idx",
    "write_idx",
]


def make_loader(ds: ImageDataset, *, batch_size: int, device: str | torch.device = "cpu", train: bool = True,
                pad: int | None = None, flip: bool | None = None, seed: int = 0, **kw) -> DeviceLoader:
    """A `DeviceLoader` over ``ds`` with the dataset's customary augmentation when ``train`` (none otherwise).

    ``pad``/``flip`` override the dataset defaults (``ds.pad``, ``ds.flip``); other keyword arguments go to
    `DeviceLoader` (``drop_last``, ``subset``, ``pad_mode``, ``shuffle``).
    """
    if pad is None:
        pad = ds.pad if train else 0
    if flip is None:
        flip = ds.flip if train else False
    kw.setdefault("shuffle", train)
    return DeviceLoader(ds.images, ds.labels, batch_size=batch_size, device=device, pad=pad, flip=flip, seed=seed,
                        **kw)
