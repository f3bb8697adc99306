"""DeviceLoader: coverage, determinism, vectorised crop/flip (checked against a per-sample loop and atas_gather),
subset, drop_last, resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastat import ops
from fastat.batch import BatchInfo
from fastat.data import DeviceLoader, ImageDataset, make_loader


def _data(n=37, c=2, h=5, w=6):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8), torch.arange(n) % 7


def _epoch(loader):
    return [(x.clone(), y.clone(), info) for x, y, info in loader]


def test_each_epoch_covers_every_example_once():
    images, labels = _data()
    loader = DeviceLoader(images, labels, batch_size=8, seed=1)
    assert len(loader) == 5
    for epoch in (1, 2):
        batches = _epoch(loader)
        idx = torch.cat([info.index for _, _, info in batches])
        assert sorted(idx.tolist()) == list(range(37))
        assert all(info.epoch == epoch and info.num_examples == 37 for _, _, info in batches)
        for x, y, info in batches:
            assert torch.equal(y, labels[info.index]) and x.dtype == torch.float32
            assert torch.equal(x, images[info.index].float() / 255)  # no augmentation by default
    assert loader.epoch == 3


def test_deterministic_for_a_seed():
    images, labels = _data()
    a = _epoch(DeviceLoader(images, labels, batch_size=8, seed=4, pad=2, flip=True))
    b = _epoch(DeviceLoader(images, labels, batch_size=8, seed=4, pad=2, flip=True))
    c = _epoch(DeviceLoader(images, labels, batch_size=8, seed=5, pad=2, flip=True))
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[2].index, q[2].index) for p, q in zip(a, b))
    assert not all(torch.equal(p[2].index, q[2].index) for p, q in zip(a, c))


def test_crop_and_flip_match_a_per_sample_loop_and_atas_gather():
    images, labels = _data()
    pad = 2
    loader = DeviceLoader(images, labels, batch_size=16, seed=0, pad=pad, flip=True)
    padded = F.pad(images, (pad, pad, pad, pad))
    for x, _, info in loader:
        assert isinstance(info, BatchInfo) and info.pad == pad
        assert info.offsets.dtype == torch.int64 and info.offsets.min() >= 0 and info.offsets.max() <= 2 * pad
        for b in range(x.shape[0]):
            i, (r, c) = int(info.index[b]), info.offsets[b].tolist()
            crop = padded[i, :, r:r + 5, c:c + 6]
            if info.flips[b]:
                crop = crop.flip(-1)
            assert torch.equal(x[b], crop.float() / 255)
        # per-example buffers in the padded frame follow the same transform: atas_gather(frame, ...) on x = 0
        frames = padded.float() / 255
        out = ops.atas_gather(frames, info.index, info.offsets, info.flips, torch.zeros_like(x))
        assert torch.equal(out, x)
    assert info.flips.any() and (~info.flips).any()


def test_flip_only_and_reflect_padding():
    images, labels = _data(n=8)
    x, _, info = next(iter(DeviceLoader(images, labels, batch_size=8, seed=2, flip=True)))
    assert info.offsets is None and info.pad == 0
    expected = torch.where(info.flips[:, None, None, None], images[info.index].flip(-1), images[info.index])
    assert torch.equal(x, expected.float() / 255)
    x, _, info = next(iter(DeviceLoader(images, labels, batch_size=8, seed=2, pad=1, pad_mode="reflect")))
    frames = F.pad(images.float(), (1, 1, 1, 1), mode="reflect")
    for b in range(8):
        r, c = info.offsets[b].tolist()
        assert torch.equal(x[b] * 255, frames[int(info.index[b]), :, r:r + 5, c:c + 6])


def test_subset_and_drop_last():
    images, labels = _data()
    loader = DeviceLoader(images, labels, batch_size=8, subset=20, drop_last=True, shuffle=False)
    batches = _epoch(loader)
    assert len(loader) == 2 and len(batches) == 2 and all(x.shape[0] == 8 for x, _, _ in batches)
    assert batches[0][2].num_examples == 20 and torch.equal(batches[0][2].index, torch.arange(8))
    pick = torch.tensor([30, 3, 17, 9])
    loader = DeviceLoader(images, labels, batch_size=4, subset=pick, shuffle=False)
    x, y, info = next(iter(loader))
    assert torch.equal(info.index, torch.arange(4)) and torch.equal(loader.source_index, pick)
    assert torch.equal(x, images[pick].float() / 255) and torch.equal(y, labels[pick])


def test_resume_mid_epoch_and_across_epochs():
    images, labels = _data()
    kw = dict(batch_size=8, seed=9, pad=1, flip=True)
    reference = DeviceLoader(images, labels, **kw)
    full = _epoch(reference) + _epoch(reference)
    loader = DeviceLoader(images, labels, **kw)
    got = []
    for k, batch in enumerate(loader):
        got.append((batch[0].clone(), batch[1].clone(), batch[2]))
        if k == 2:
            state = loader.state_dict()
            break
    resumed = DeviceLoader(images, labels, **kw)
    resumed.load_state_dict(state)
    got += _epoch(resumed) + _epoch(resumed)
    assert len(got) == len(full)
    for (xa, ya, ia), (xb, yb, ib) in zip(got, full):
        assert torch.equal(xa, xb) and torch.equal(ia.index, ib.index) and torch.equal(ia.offsets, ib.offsets)
        assert ia.epoch == ib.epoch
    with pytest.raises(ValueError, match="batches of"):
        DeviceLoader(images, labels, batch_size=4).load_state_dict(state)


def test_make_loader_defaults_and_errors():
    images, labels = _data(n=10, c=3, h=4, w=4)
    ds = ImageDataset("cifar10", "train", images, labels, 10, None, None, 8 / 255, pad=4, flip=True)
    train = make_loader(ds, batch_size=5, train=True)
    assert train.pad == 4 and train.flip and train.shuffle
    test = make_loader(ds, batch_size=5, train=False)
    assert test.pad == 0 and not test.flip and not test.shuffle
    with pytest.raises(ValueError, match="larger than the dataset"):
        DeviceLoader(images, labels, batch_size=11)
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(images.float(), labels, batch_size=2)
    with pytest.raises(ValueError, match="subset"):
        DeviceLoader(images, labels, batch_size=2, subset=[1, 1])
    with pytest.raises(ValueError, match="pad_mode"):
        DeviceLoader(images, labels, batch_size=2, pad=1, pad_mode="edge")
