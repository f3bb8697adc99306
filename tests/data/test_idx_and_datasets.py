"""IDX reader and load_dataset on fake roots (no torchvision, no network), plus the embedded Fashion-MNIST."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fastat.data import FASHION_MNIST_ROOT, IDXError, canonical_name, load_dataset, read_idx, write_idx


def _fake_idx_root(root: Path, sizes=(("train", 12), ("t10k", 6)), subdir: str = "") -> Path:
    rng = np.random.default_rng(0)
    folder = root / subdir
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in sizes:
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,), dtype=np.uint8))
    return root


def test_idx_round_trip_and_validation(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.gz", "a"):
        write_idx(tmp_path / name, arr)
        assert np.array_equal(read_idx(tmp_path / name, ndim=3), arr)
    with pytest.raises(IDXError, match="expected an IDX file with 1 dimension"):
        read_idx(tmp_path / "a", ndim=1)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(IDXError, match="bad magic"):
        read_idx(tmp_path / "bad")
    raw = (tmp_path / "a").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(IDXError, match="implies"):
        read_idx(tmp_path / "short")
    (tmp_path / "broken.gz").write_bytes(b"not gzip at all")
    with pytest.raises(IDXError, match="cannot read"):
        read_idx(tmp_path / "broken.gz")


def test_fashion_mnist_from_any_root(tmp_path):
    root = _fake_idx_root(tmp_path)
    ds = load_dataset("Fashion_MNIST", root=root, split="test")
    assert ds.name == "fashion-mnist" and ds.split == "test" and len(ds) == 6
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (6, 1, 28, 28)
    assert ds.labels.dtype == torch.int64 and ds.num_classes == 10 and ds.in_channels == 1
    assert ds.input_size == (28, 28) and ds.mean == (0.2860,) and ds.eps > 0 and len(ds.classes) == 10
    expected = read_idx(root / "t10k-images-idx3-ubyte.gz")
    assert np.array_equal(ds.images[:, 0].numpy(), expected)


def test_missing_files_name_the_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_dataset("fashion-mnist", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(ValueError, match="needs a data root"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="'split'"):
        load_dataset("fashion-mnist", root=tmp_path, split="val")
    with pytest.raises(ValueError, match="'name'"):
        load_dataset("imagenet", root=tmp_path)


def test_mnist_torchvision_layout(tmp_path):
    _fake_idx_root(tmp_path, subdir="MNIST/raw")
    ds = load_dataset("mnist", root=tmp_path, split="train")
    assert len(ds) == 12 and ds.mean == (0.1307,)


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_pickle_root(tmp_path, hundred):
    rng = np.random.default_rng(1)
    folder = tmp_path / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir()
    names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    key = b"fine_labels" if hundred else b"labels"
    batches = []
    for name in names:
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, 100 if hundred else 10, 3))
        batches.append((data, labels))
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, key: labels}, f)
    ds = load_dataset("cifar100" if hundred else "CIFAR-10", root=tmp_path, split="train")
    assert ds.images.shape == (3 * len(names), 3, 32, 32) and ds.num_classes == (100 if hundred else 10)
    assert np.array_equal(ds.images[0].numpy(), batches[0][0][0].reshape(3, 32, 32))
    assert ds.labels.tolist() == [int(v) for _, labels in batches for v in labels]
    assert ds.pad == 4 and ds.flip


def test_torchvision_only_paths_fail_clearly(tmp_path):
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision is installed")
    except ImportError:
        pass
    (tmp_path / "test_32x32.mat").write_bytes(b"")
    with pytest.raises(ImportError, match="torchvision"):
        load_dataset("svhn", root=tmp_path, split="test")
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    with pytest.raises(ImportError, match="torchvision"):
        load_dataset("imagefolder", root=tmp_path / "folder")


def test_canonical_names():
    assert canonical_name("FMNIST") == "fashion-mnist" and canonical_name("cifar-100") == "cifar100"
    assert canonical_name("svhn") == "svhn" and canonical_name("image_folder") == "imagefolder"


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT, "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="embedded Fashion-MNIST (Debian dataset-fashion-mnist) not installed")
def test_embedded_fashion_mnist():
    test = load_dataset("fashion-mnist", split="test")
    assert test.images.shape == (10000, 1, 28, 28) and test.labels.shape == (10000,)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    with gzip.open(Path(FASHION_MNIST_ROOT, "train-labels-idx1-ubyte.gz"), "rb") as f:
        assert f.read(4) == b"\x00\x00\x08\x01"


def test_default_fashion_mnist_root_order(tmp_path, monkeypatch):
    from pathlib import Path

    from fastat.data import datasets

    monkeypatch.setenv("FASTAT_FASHION_MNIST_ROOT", str(tmp_path))
    assert datasets.default_fashion_mnist_root() == tmp_path
    monkeypatch.delenv("FASTAT_FASHION_MNIST_ROOT")
    monkeypatch.setattr(datasets, "FASHION_MNIST_ROOT", str(tmp_path / "absent"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "fashion-mnist").mkdir(parents=True)
    assert datasets.default_fashion_mnist_root() == Path("data/fashion-mnist")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        datasets.load_dataset("fashion-mnist")


def test_a_planted_cifar_batch_does_not_run_code(tmp_path, monkeypatch):
    """The CIFAR reader unpickles only dicts, lists, bytes, numbers and numpy arrays."""
    import os

    class Exploit:
        def __reduce__(self):
            return os.system, ("touch PWNED",)

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Exploit(), b"labels": [0]}, f)
    with pytest.raises(ValueError, match="test_batch: not a CIFAR python batch"):
        load_dataset("cifar10", root=tmp_path, split="test")
    assert not (tmp_path / "PWNED").exists()
