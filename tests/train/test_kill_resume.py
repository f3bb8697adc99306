"""A `fastat train` process killed with SIGKILL (no cleanup; possibly while it writes a checkpoint) and continued with
``--resume`` ends bit-identical to an uninterrupted run on the CPU: weights, optimiser and ATAS state (δ, v)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from fastat.checkpoint import load_checkpoint

ARGS = [sys.executable, "-m", "fastat", "train", "--method", "atas", "--hp", "warmup_epochs=1", "--epochs", "3",
        "--subset", "192", "--batch-size", "32", "--model", "small-cnn", "--eval-n", "32", "--eval-steps", "2",
        "--co-batch", "16", "--co-steps", "1", "--device", "cpu", "--no-progress"]


def _finished(out) -> dict:
    subprocess.run(ARGS + ["--out", str(out)] + (["--resume"] if (out / "checkpoint.pt").exists() else []),
                   check=True, capture_output=True, timeout=600)
    return load_checkpoint(out / "checkpoint.pt")


def _tensors(obj, prefix=""):
    """Every tensor in a nested state (dicts/lists), by path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_then_resume_ends_bit_identical(tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(ARGS + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt, metrics = killed / "checkpoint.pt", killed / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not ckpt.exists():
        time.sleep(0.01)
    time.sleep(0.2)  # into epoch 2
    assert proc.poll() is None, "the run ended before it could be killed (make it longer)"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert load_checkpoint(ckpt)["epoch"] in (1, 2)

    resumed, straight = _finished(killed), _finished(tmp_path / "straight")
    assert resumed["epoch"] == straight["epoch"] == 3
    for part in ("model", "optimizer", "method"):
        a, b = dict(_tensors(straight[part])), dict(_tensors(resumed[part]))
        assert a.keys() == b.keys() and a, part
        for k in a:
            assert torch.equal(a[k], b[k]), f"{part}{k}"
    rows = metrics.read_text().splitlines()
    assert len(rows) == 3  # one line per epoch: the resumed run does not repeat the killed epochs
