"""ATAS with its per-example state in host memory (``state_device="cpu"``) on the GPU: each step gathers the batch's
rows through pinned memory, runs the CUDA ops on them and writes them back asynchronously (methods/_host_rows.py).
The trajectory must equal device-resident state bit for bit from the same state; the deferred write-back must be
finished whenever the state is read; the trainer runs it and refuses to capture it in a CUDA graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastat.batch import BatchInfo
from fastat.methods import ATAS

from ._dryrun import DEV, EMULATED, needs_gpu

pytestmark = pytest.mark.cuda

N, PAD, B, EPS = 300, 2, 64, 0.2


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 12 * 12, 10)).to(DEV)


def _batches(epoch: int, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor, BatchInfo]]:
    """Disjoint index sets within an epoch (as a sampler's permutation), random crops and flips, on DEV."""
    g = torch.Generator().manual_seed(epoch)
    perm = torch.randperm(N, generator=g)
    out = []
    for k in range(count):
        index = perm[k * B:(k + 1) * B]
        x = torch.rand(B, 3, 12, 12, generator=g)
        y = torch.randint(0, 10, (B,), generator=g)
        info = BatchInfo(index=index.to(DEV), num_examples=N, pad=PAD, epoch=epoch,
                         offsets=torch.randint(0, 2 * PAD + 1, (B, 2), generator=g).to(DEV),
                         flips=(torch.rand(B, generator=g) < 0.5).to(DEV))
        out.append((x.to(DEV), y.to(DEV), info))
    return out


def _loaded(**kw) -> ATAS:
    g = torch.Generator().manual_seed(7)
    method = ATAS(eps=EPS, **kw)
    method.load_state_dict({"delta_buf": (torch.rand(N, 3, 12 + 2 * PAD, 12 + 2 * PAD, generator=g) * 2 - 1) * EPS,
                            "v_buf": torch.rand(N, generator=g) * 1e-4})
    return method.to(DEV)


@pytest.mark.parametrize("state_dtype", ["fp32", "bf16"])
def test_host_state_follows_device_state_exactly(state_dtype):
    model = _net()
    device, host = _loaded(state_dtype=state_dtype), _loaded(state_dtype=state_dtype, state_device="cpu")
    assert device.delta_buf.device.type == DEV and host.delta_buf.device.type == "cpu"
    for epoch in (5, 6, 7):  # warm-up, then adaptive steps
        for x, y, info in _batches(epoch):
            want, got = device.perturb(model, x, y, info), host.perturb(model, x, y, info)
            assert got.device == want.device and torch.equal(got, want)
            assert host._rows.pending != EMULATED  # the write-back is deferred on the GPU, immediate on the CPU
            assert torch.equal(host.step_sizes(), device.step_sizes())
        assert torch.equal(host.v_buf, device.v_buf.cpu()) and not host._rows.pending  # reading finishes it
        assert torch.equal(host.delta_buf, device.delta_buf.cpu())
    state = host.state_dict()  # a checkpoint holds the written-back rows
    assert state["delta_buf"].device.type == "cpu" and torch.equal(state["delta_buf"], device.delta_buf.cpu())


@needs_gpu
def test_host_state_allocates_and_resets_through_the_gpu_in_chunks():
    model = _net()
    host = ATAS(eps=EPS, state_device="cpu", epochs=20)
    torch.cuda.manual_seed(0)
    x, y, info = _batches(1)[0]
    host.perturb(model, x, y, info)
    buf = host.delta_buf
    assert buf.device.type == "cpu" and buf.shape == (N, 3, 16, 16) and buf.abs().max() <= EPS + 1e-6
    assert buf.min() < -0.9 * EPS and buf.max() > 0.9 * EPS  # a real U(-eps, eps) draw, not zeros
    host.on_epoch_start(10)
    assert not torch.equal(host.delta_buf, buf) and host.delta_buf.abs().max() <= EPS


@needs_gpu
def test_trainer_runs_host_state_and_refuses_to_graph_it():
    from fastat.train import TrainConfig, Trainer
    from fastat.train.config import ConfigError

    cfg = dict(method="atas", dataset="fashion-mnist", eps=0.2, subset=512, batch_size=128, device="cuda",
               model="small-cnn", precision="bf16", eval_n=128, eval_steps=2, co_batch=64, co_steps=1,
               progress=False, plot=False, checkpoint=False, epochs=1, method_kwargs={"state_device": "cpu"})
    with pytest.raises(ConfigError, match="cuda_graph"):
        Trainer(TrainConfig(cuda_graph=True, **cfg))
    t = Trainer(TrainConfig(**cfg))
    t.fit()
    assert t.method.delta_buf.device.type == "cpu" and t.history[-1]["train_loss"] > 0
