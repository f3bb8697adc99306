"""``download=True`` / ``--download``: the only way fastat fetches data. torchvision is faked here (no network): its
MNIST "download" writes small IDX files, and checks that the root's download lock is held while it runs."""

from __future__ import annotations

import fcntl
import types
from pathlib import Path

import numpy as np
import pytest

from fastat.data import datasets, load_dataset, write_idx


class _FakeMNIST:
    calls: list[tuple[str, bool]] = []

    def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
        lock = Path(root) / ".fastat-download.lock"
        with open(lock, "a") as other:  # another open file: the lock must be taken already
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _FakeMNIST.calls.append((root, download))
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for split, n in (("train", 24), ("t10k", 12)):
            write_idx(raw / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
            write_idx(raw / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,), dtype=np.uint8))


@pytest.fixture
def fake_torchvision(monkeypatch):
    _FakeMNIST.calls = []
    monkeypatch.setattr(datasets, "_torchvision", lambda what: types.SimpleNamespace(MNIST=_FakeMNIST))
    return _FakeMNIST


def test_load_dataset_downloads_only_when_asked_under_a_lock(tmp_path, fake_torchvision):
    root = tmp_path / "fresh" / "mnist"
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_dataset("mnist", root=root, split="train")
    assert fake_torchvision.calls == [] and not root.exists()
    ds = load_dataset("mnist", root=root, split="train", download=True)
    assert len(ds) == 24 and fake_torchvision.calls == [(str(root), True)]
    assert (root / ".fastat-download.lock").exists()
    assert len(load_dataset("mnist", root=root, split="test", download=True)) == 12  # present now: no download
    assert len(fake_torchvision.calls) == 1


def test_train_cli_download_flag(tmp_path, fake_torchvision, capsys):
    from fastat.cli import main

    root = tmp_path / "mnist"
    args = ["train", "--method", "fgsm_rs", "--dataset", "mnist", "--data-root", str(root), "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--model", "small-cnn", "--eval-n", "8", "--eval-steps", "1",
            "--co-batch", "4", "--co-steps", "1", "--no-progress"]
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err and fake_torchvision.calls == []
    assert main(args + ["--download"]) == 0
    assert fake_torchvision.calls and "epoch   1" in capsys.readouterr().out


def test_eval_cli_download_flag(tmp_path, fake_torchvision, capsys):
    from fastat.eval import cli

    from fastat.checkpoint import save_checkpoint
    from fastat.models import build_model

    config = {"name": "small-cnn", "in_channels": 1, "num_classes": 10, "input_size": (28, 28), "width": 4,
              "hidden": 16}
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoint.pt", model=build_model(**config), model_config=config,
                           dataset="mnist", eps=0.1, epoch=1)
    args = [str(ckpt), "--dataset", "mnist", "--data-root", str(tmp_path / "mnist"), "--n", "6", "--pgd-steps", "1",
            "--restarts", "1", "--device", "cpu", "--no-progress"]
    assert cli.main(args) == 2 and "--download" in capsys.readouterr().err
    assert cli.main(args + ["--download"]) == 0 and fake_torchvision.calls


def test_present_data_is_read_without_the_lock(tmp_path, fake_torchvision, monkeypatch):
    """The data is there: --download must not touch the root (the embedded copy's folder is read-only)."""
    root = tmp_path / "mnist"
    load_dataset("mnist", root=root, split="train", download=True)
    (root / ".fastat-download.lock").unlink()
    monkeypatch.setattr(datasets, "_download_lock", lambda root: pytest.fail("locked a root that needs nothing"))
    assert len(load_dataset("mnist", root=root, split="test", download=True)) == 12
    assert not (root / ".fastat-download.lock").exists() and len(fake_torchvision.calls) == 1
