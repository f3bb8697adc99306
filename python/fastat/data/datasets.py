"""Datasets as whole uint8 tensors: ``load_dataset(name, root, split) -> ImageDataset``.

Small datasets (Fashion-MNIST, MNIST, CIFAR-10/100, SVHN) fit in GPU memory as uint8, so fastat loads them whole and
augments on the device (`fastat.data.loader`). Readers use numpy only where the files allow it (IDX, CIFAR's python
pickles), so Fashion-MNIST and any prepared MNIST/CIFAR root need no torchvision. torchvision is imported lazily to
download (only when ``download=True``), to read SVHN's .mat files, and for image folders.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .idx import read_idx

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
LOCAL_FASHION_MNIST_ROOT = "data/fashion-mnist"  # relative to the working directory (a copy on a machine without apt)


def default_fashion_mnist_root() -> Path:
    """Where Fashion-MNIST is looked for when no root is given: $FASTAT_FASHION_MNIST_ROOT if set, else the Debian
    package's folder (FASHION_MNIST_ROOT) if it exists, else ./data/fashion-mnist if it exists, else the Debian folder
    (whose absence the reader then reports, with the apt command)."""
    env = os.environ.get("FASTAT_FASHION_MNIST_ROOT")
    if env:
        return Path(env).expanduser()
    for candidate in (Path(FASHION_MNIST_ROOT), Path(LOCAL_FASHION_MNIST_ROOT)):
        if candidate.is_dir():
            return candidate
    return Path(FASHION_MNIST_ROOT)
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """Metadata of a named dataset. ``eps`` is the customary ℓ∞ budget in [0, 1] pixel units; ``pad``/``flip`` the
    customary training augmentation (random crop with zero padding ``pad``, horizontal flip)."""

    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    eps: float
    pad: int
    flip: bool


SPECS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(10, 1, (28, 28), (0.2860,), (0.3530,), 0.1, 0, False),
    "mnist": DatasetSpec(10, 1, (28, 28), (0.1307,), (0.3081,), 0.3, 0, False),
    # CIFAR-10 as WONG (methods.md §0.1); CIFAR-100 and SVHN as NF.
    "cifar10": DatasetSpec(10, 3, (32, 32), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), 8 / 255, 4, True),
    "cifar100": DatasetSpec(100, 3, (32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 8 / 255, 4, True),
    "svhn": DatasetSpec(10, 3, (32, 32), (0.4380, 0.4440, 0.4730), (0.1751, 0.1771, 0.1744), 8 / 255, 4, False),
}
NAMES = tuple(SPECS) + ("imagefolder",)
_ALIASES = {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10",
            "cifar-100": "cifar100", "image-folder": "imagefolder", "folder": "imagefolder"}


@dataclass
class ImageDataset:
    """A whole dataset split in memory.

    Attributes:
        images: (N, C, H, W) uint8.
        labels: (N,) int64 in [0, num_classes).
        name, split, root: where it came from.
        num_classes, mean, std, eps, pad, flip: as `DatasetSpec` (mean/std None: no normalisation suggested).
        classes: class names when the source has them.
    """

    name: str
    split: str
    images: Tensor
    labels: Tensor
    num_classes: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    eps: float
    pad: int = 0
    flip: bool = False
    root: str | None = None
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])


def canonical_name(name: str) -> str:
    """The registry name for ``name`` ("CIFAR-10" → "cifar10", "fashion_mnist" → "fashion-mnist")."""
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in NAMES:
        raise ValueError(f"load_dataset: argument 'name' must be one of {', '.join(NAMES)}, got {name!r}")
    return key


def load_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train", download: bool = False,
                 **kw) -> ImageDataset:
    """Load a dataset split as uint8 images (N, C, H, W) and int64 labels, with its metadata.

    Args:
        name: "fashion-mnist", "mnist", "cifar10", "cifar100", "svhn" or "imagefolder".
        root: the data folder. Fashion-MNIST defaults to the embedded copy (`default_fashion_mnist_root`: the
            Debian package's folder, or ./data/fashion-mnist, or $FASTAT_FASHION_MNIST_ROOT) and accepts any folder
            with the four ``*-ubyte.gz`` files (or torchvision's FashionMNIST/raw layout); MNIST/CIFAR/SVHN use
            torchvision's layouts (MNIST/raw, cifar-10-batches-py, cifar-100-python, SVHN .mat files); an image
            folder is ``root/<split>/<class>/*`` (``root/val`` also serves ``split="test"``) or ``root/<class>/*``.
        split: "train" or "test".
        download: let torchvision download a missing dataset into ``root`` (never done otherwise); processes
            downloading into one root take turns (a lock file in it), so torchrun ranks may all pass it.
        **kw: ``image_size=(H, W)`` for image folders whose images differ in size (resized with PIL).
    """
    key = canonical_name(name)
    if split not in SPLITS:
        raise ValueError(f"load_dataset: argument 'split' must be 'train' or 'test', got {split!r}")
    if root is None:
        if key != "fashion-mnist":
            raise ValueError(f"load_dataset: dataset {key!r} needs a data root (argument 'root' / --data-root)")
        root = default_fashion_mnist_root()
    root = Path(root).expanduser()
    if key == "imagefolder":
        return _load_image_folder(root, split, download=download, **kw)
    if kw:
        raise ValueError(f"load_dataset: unexpected options {sorted(kw)} for dataset {key!r}")
    try:  # what is there already is read without the lock (the root may be read-only, e.g. the Debian package's)
        images, labels, classes = _READERS[key](root, split, False)
    except FileNotFoundError:
        if not download:
            raise
        with _download_lock(root):
            images, labels, classes = _READERS[key](root, split, True)
    spec = SPECS[key]
    _check_labels(labels, spec.num_classes, f"{key} {split} split in {str(root)!r}")
    return ImageDataset(key, split, images, labels, spec.num_classes, spec.mean, spec.std, spec.eps, spec.pad,
                        spec.flip, str(root), classes)


def _check_labels(labels: Tensor, num_classes: int, what: str) -> None:
    """Labels must lie in [0, num_classes): a damaged or foreign label file fails here, not mid-training."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"the {what} has labels in [{int(labels.min())}, {int(labels.max())}], outside the "
                         f"{num_classes} classes [0, {num_classes - 1}]")


_CACHE: dict[tuple, ImageDataset] = {}


def load_dataset_cached(name: str, root: str | os.PathLike | None = None, split: str = "train",
                        download: bool = False) -> ImageDataset:
    """`load_dataset`, decoded once per process per (name, root, split): the splits are read-only uint8 tensors, and
    gz decoding costs seconds for Fashion-MNIST (tests and sweeps build many trainers)."""
    key = (name, None if root is None else str(root), split)
    if key not in _CACHE:
        _CACHE[key] = load_dataset(name, root, split, download=download)
    return _CACHE[key]


@contextlib.contextmanager
def _download_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root/.fastat-download.lock`` (created with ``root``): processes that may download
    into the same root (torchrun ranks, a sweep's runs) take turns, so one downloads and the others then find the
    files. A no-op where ``fcntl`` is missing (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".fastat-download.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------------------ readers


def _find(root: Path, candidates: list[str]) -> Path | None:
    for rel in candidates:
        p = root / rel
        if p.is_file():
            return p
    return None


def _read_idx_pair(root: Path, split: str, subdirs: list[str], what: str) -> tuple[Tensor, Tensor] | None:
    prefix = "train" if split == "train" else "t10k"
    files = []
    for kind, nd in (("images-idx3", 3), ("labels-idx1", 1)):
        base = f"{prefix}-{kind}-ubyte"
        found = _find(root, [f"{d}{base}{ext}" for d in subdirs for ext in (".gz", "")])
        if found is None:
            return None
        files.append((found, nd))
    images = read_idx(files[0][0], ndim=3)
    labels = read_idx(files[1][0], ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{what} at {root}: {images.shape[0]} images but {labels.shape[0]} labels")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _missing(what: str, root: Path, expected: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} not found under {str(root)!r} (expected {expected}); pass another root, or "
                             f"--download (download=True in Python; needs torchvision and network) where supported")


def _torchvision(what: str):
    try:
        import torchvision  # noqa: F401
        import torchvision.datasets as tvd
    except ImportError:
        raise ImportError(f"{what}: this needs torchvision (pip install torchvision)") from None
    return tvd


def _load_fashion_mnist(root: Path, split: str, download: bool):
    subdirs = ["", "FashionMNIST/raw/", "raw/"]
    got = _read_idx_pair(root, split, subdirs, "Fashion-MNIST")
    if got is None and download:
        _torchvision("Fashion-MNIST download").FashionMNIST(str(root), train=split == "train", download=True)
        got = _read_idx_pair(root, split, subdirs, "Fashion-MNIST")
    if got is None:
        raise _missing("Fashion-MNIST", root, "train/t10k-{images-idx3,labels-idx1}-ubyte.gz; the embedded copy is "
                       "Debian's dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist), or put the files in "
                       "./data/fashion-mnist")
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    return got[0], got[1], classes


def _load_mnist(root: Path, split: str, download: bool):
    subdirs = ["MNIST/raw/", "", "raw/"]
    got = _read_idx_pair(root, split, subdirs, "MNIST")
    if got is None and download:
        _torchvision("MNIST download").MNIST(str(root), train=split == "train", download=True)
        got = _read_idx_pair(root, split, subdirs, "MNIST")
    if got is None:
        raise _missing("MNIST", root, "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]")
    return got[0], got[1], [str(i) for i in range(10)]


class _BatchUnpickler(pickle.Unpickler):
    """Reads only what CIFAR's python batches hold — dicts, lists, bytes, numbers and numpy arrays — so a planted
    batch file cannot run code (plain `pickle.load`, as torchvision uses, would)."""

    ALLOWED = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")}
    ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} has no place in a CIFAR batch")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as exc:
        raise ValueError(f"{path}: not a CIFAR python batch ({exc})") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR python batch (a {type(batch).__name__}, not a dict)")
    return batch


def _load_cifar(root: Path, split: str, download: bool, *, hundred: bool):
    folder = "cifar-100-python" if hundred else "cifar-10-batches-py"
    files = (["train"] if split == "train" else ["test"]) if hundred else \
        ([f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"])
    base = root / folder if (root / folder).is_dir() else root
    if not all((base / f).is_file() for f in files) and download:
        tvd = _torchvision("CIFAR download")
        (tvd.CIFAR100 if hundred else tvd.CIFAR10)(str(root), train=split == "train", download=True)
        base = root / folder
    if not all((base / f).is_file() for f in files):
        raise _missing("CIFAR-100" if hundred else "CIFAR-10", root, f"{folder}/{{{','.join(files)}}}")
    label_key = b"fine_labels" if hundred else b"labels"
    data, labels = [], []
    for f in files:
        entry = _unpickle(base / f)
        data.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
    meta = base / ("meta" if hundred else "batches.meta")
    classes = []
    if meta.is_file():
        names = _unpickle(meta).get(b"fine_label_names" if hundred else b"label_names", [])
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return torch.from_numpy(np.concatenate(data)), torch.from_numpy(np.concatenate(labels)), classes


def _load_svhn(root: Path, split: str, download: bool):
    mat = root / f"{split}_32x32.mat"
    if not mat.is_file() and not download:
        raise _missing("SVHN", root, f"{split}_32x32.mat")
    ds = _torchvision("SVHN").SVHN(str(root), split=split, download=download)
    labels = np.asarray(ds.labels, dtype=np.int64) % 10  # torchvision already maps 10 → 0; keep it idempotent
    return torch.from_numpy(np.ascontiguousarray(ds.data, dtype=np.uint8)), torch.from_numpy(labels), \
        [str(i) for i in range(10)]


_READERS: dict[str, Callable] = {
    "fashion-mnist": _load_fashion_mnist,
    "mnist": _load_mnist,
    "cifar10": lambda root, split, download: _load_cifar(root, split, download, hundred=False),
    "cifar100": lambda root, split, download: _load_cifar(root, split, download, hundred=True),
    "svhn": _load_svhn,
}


def _load_image_folder(root: Path, split: str, *, download: bool = False,
                       image_size: tuple[int, int] | None = None) -> ImageDataset:
    if download:
        raise ValueError("load_dataset: an image folder cannot be downloaded (download=True)")
    folder = root / split
    if not folder.is_dir() and split == "test" and (root / "val").is_dir():
        folder = root / "val"
    if not folder.is_dir():
        folder = root
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    tvd = _torchvision("image folder")
    ds = tvd.ImageFolder(str(folder))
    if len(ds) == 0:
        raise FileNotFoundError(f"image folder {str(folder)!r} holds no images")
    images = []
    for path, _ in ds.samples:
        img = ds.loader(path)
        if image_size is not None:
            img = img.resize((image_size[1], image_size[0]))
        images.append(np.asarray(img, dtype=np.uint8).reshape(img.size[1], img.size[0], -1))
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise ValueError(f"image folder {str(folder)!r}: images differ in size {sorted(shapes)[:3]}...; "
                         f"pass image_size=(H, W)")
    data = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor([t for _, t in ds.samples], dtype=torch.int64)
    return ImageDataset("imagefolder", split, data, labels, len(ds.classes), None, None, 8 / 255, 0, False,
                        str(root), list(ds.classes))
