"""`fastat.train.graphs` without a GPU: the capture/replay bookkeeping of `GraphedStep` and `EpochSums`, with the few
torch.cuda calls it makes replaced by stand-ins whose "graph" re-runs the captured step on the static inputs (the GPU
behaviour itself is tests/gpu/test_train_graph.py's)."""

from __future__ import annotations

import contextlib
import types

import pytest
import torch

from fastat.batch import BatchInfo
from fastat.train.graphs import EpochSums, GraphedStep


@pytest.fixture
def fake_cuda(monkeypatch):
    """Stand-ins for the torch.cuda calls of `GraphedStep`; a "graph" replays the owner's step on its static inputs.
    Returns the list of captures (fill ``owner`` with the GraphedStep)."""
    captures = types.SimpleNamespace(graphs=[], owner=None)

    class Graph:
        def replay(self):
            captures.owner.step(*captures.owner.static)

    @contextlib.contextmanager
    def graph(g, pool=None):
        captures.graphs.append(g)
        yield

    stream = types.SimpleNamespace(wait_stream=lambda other: None)
    for name, value in {"CUDAGraph": Graph, "graph": graph, "Stream": lambda device=None: stream,
                        "stream": lambda s: contextlib.nullcontext(), "current_stream": lambda device=None: stream,
                        "synchronize": lambda device=None: None, "graph_pool_handle": lambda: None}.items():
        monkeypatch.setattr(torch.cuda, name, value)
    return captures


def _batch(value: float):
    x = torch.full((2, 1, 2, 2), value)
    return x, torch.zeros(2, dtype=torch.int64), BatchInfo(index=torch.arange(2), num_examples=4, pad=0)


def test_warm_up_capture_per_epoch_replay_and_reset(fake_cuda):
    sums, seen = EpochSums(torch.device("cpu")), []

    def step(x, y, info):
        seen.append(float(x[0, 0, 0, 0]))
        sums.add("loss", x.sum())

    graphed = fake_cuda.owner = GraphedStep(step, sums, torch.device("cpu"), before_capture=lambda: None)
    graphed.warm_up(*_batch(1.0))
    assert seen == [1.0] and graphed.graph is None
    sums.sums.clear()
    # epoch 1: "loss" first seen during the capture -> allocated outside, captured again, then replayed
    assert graphed.replay(*_batch(2.0), epoch=1)
    assert len(fake_cuda.graphs) == 2 and graphed.replays == 1 and "loss" in sums.sums
    assert graphed.replay(*_batch(3.0), epoch=1)  # the same capture: the new batch copied into the static input
    assert len(fake_cuda.graphs) == 2 and seen[-1] == 3.0
    assert graphed.replay(*_batch(4.0), epoch=2)  # a new epoch captures again (per-epoch settings are baked in)
    assert len(fake_cuda.graphs) == 3 and graphed.replays == 3 and seen[-1] == 4.0
    graphed.reset()  # a checkpoint load: the next step captures again
    assert graphed.graph is None and graphed.replay(*_batch(5.0), epoch=2) and len(fake_cuda.graphs) == 4


def test_a_failed_capture_reports_once_and_the_caller_goes_eager(fake_cuda):
    def step(x, y, info):
        raise RuntimeError("operation not permitted when stream is capturing")

    graphed = GraphedStep(step, EpochSums(torch.device("cpu")), torch.device("cpu"), before_capture=lambda: None)
    with pytest.warns(RuntimeWarning, match="CUDA-graph capture failed"):
        assert graphed.replay(*_batch(1.0), epoch=1) is False
    assert graphed.failed.startswith("RuntimeError: operation not permitted") and graphed.graph is None


def test_epoch_sums_defer_keys_first_seen_in_a_capture():
    sums = EpochSums(torch.device("cpu"))
    sums.add("a", torch.tensor(2.0))
    sums.capturing = True
    sums.add("b", torch.tensor(1.0))
    sums.add("a", torch.tensor(3.0))
    sums.capturing = False
    assert sums.missed == {"b"} and float(sums.sums["a"]) == 5.0 and "b" not in sums.sums
    sums.allocate(sums.missed)
    sums.zero_()
    assert float(sums.sums["a"]) == 0.0 and float(sums.sums["b"]) == 0.0
