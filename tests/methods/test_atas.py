"""ATAS: per-example δ/v buffers through crops and flips, warm-up, adaptive steps, resets (methods.md §6)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastat.batch import BatchInfo
from fastat.methods import ATAS

from ._helpers import EPS, ROUND, batch_info, data, tiny_net

N, PAD = 10, 2


def window(buf, index, offsets, flips, h, w):
    """flip(crop(buf[index])) written out sample by sample."""
    out = []
    for i, (a, c), f in zip(index.tolist(), offsets.tolist(), flips.tolist()):
        win = buf[i, :, a:a + h, c:c + w]
        out.append(win.flip(-1) if f else win)
    return torch.stack(out)


def eval_grad(model, x_in, y):
    model.eval()
    x_in = x_in.clone().requires_grad_(True)
    g = torch.autograd.grad(F.cross_entropy(model(x_in), y), x_in)[0]
    model.train()
    return g


def loaded_atas(**kw) -> ATAS:
    method = ATAS(eps=EPS, **kw)
    g = torch.Generator().manual_seed(7)
    buf = (torch.rand(N, 1, 8 + 2 * PAD, 8 + 2 * PAD, generator=g) * 2 - 1) * EPS
    method.load_state_dict({"delta_buf": buf, "v_buf": torch.rand(N, generator=g) * 1e-4})
    return method


@pytest.mark.parametrize("epoch", [1, 6])
def test_start_point_step_and_window_write_back(epoch):
    model, (x, y) = tiny_net(bn=True), data()
    method = loaded_atas()
    b = batch_info(n=N, pad=PAD, epoch=epoch)
    assert b.flips.any() and not b.flips.all() and (b.offsets != PAD).any()
    buf0, v0 = method.delta_buf.clone(), method.v_buf.clone()

    x_adv = method.perturb(model, x, y, b)

    x_adv0 = torch.clamp(x + window(buf0, b.index, b.offsets, b.flips, 8, 8), 0, 1)
    g = eval_grad(model, x_adv0, y)
    if epoch <= method.warmup_epochs:
        step = torch.full((6,), EPS)
        assert torch.equal(method.v_buf, v0)
    else:
        v = 0.5 * v0[b.index] + 0.5 * g.double().square().sum((1, 2, 3)).float()
        torch.testing.assert_close(method.v_buf[b.index], v)
        step = torch.clamp(16 / 255 / (1 + v.sqrt() / 0.01), 4 / 255, 14 / 255)
        torch.testing.assert_close(method.step_sizes(), step)
        others = torch.ones(N, dtype=torch.bool)
        others[b.index] = False
        assert torch.equal(method.v_buf[others], v0[others])
    expected = x_adv0 + step.view(-1, 1, 1, 1) * torch.sign(g)
    expected = torch.clamp(torch.minimum(torch.maximum(expected, x - EPS), x + EPS), 0, 1)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-7)

    # write-back: the window holds x_adv − x un-flipped; everything else is untouched
    assert torch.equal(window(method.delta_buf, b.index, b.offsets, b.flips, 8, 8), x_adv - x)
    touched = torch.zeros_like(buf0, dtype=torch.bool)
    for i, (a, c) in zip(b.index.tolist(), b.offsets.tolist()):
        touched[i, :, a:a + 8, c:c + 8] = True
    assert torch.equal(method.delta_buf[~touched], buf0[~touched])


def test_missing_offsets_and_flips_mean_centre_crop():
    model, (x, y) = tiny_net(), data()
    method = loaded_atas()
    b = BatchInfo(index=torch.arange(6), num_examples=N, pad=PAD, epoch=1)
    x_adv = method.perturb(model, x, y, b)
    assert torch.equal(method.delta_buf[:6, :, PAD:PAD + 8, PAD:PAD + 8], x_adv - x)


def test_buffers_are_allocated_lazily_from_batch_info():
    model, (x, y) = tiny_net(), data()
    method = ATAS(eps=EPS)
    torch.manual_seed(0)
    method.perturb(model, x, y, batch_info(n=N, pad=PAD))
    assert method.delta_buf.shape == (N, 1, 12, 12) and method.delta_buf.dtype == torch.float32
    assert method.v_buf.shape == (N,) and not method.v_buf.any()  # warm-up: v untouched
    assert method.delta_buf.abs().max() <= EPS + ROUND  # written-back windows hold x_adv − x (fp32 rounding)
    no_pad = ATAS(eps=EPS)
    no_pad.perturb(model, x, y, batch_info(n=N, pad=0, crop=False))
    assert no_pad.delta_buf.shape == (N, 1, 8, 8)
    with pytest.raises(ValueError, match="needs"):
        method.perturb(model, x, y, batch_info(n=N + 1, pad=PAD))


def test_reset_every_ten_epochs_except_the_last_and_v_kept():
    model, (x, y) = tiny_net(), data()
    method = ATAS(eps=EPS, epochs=20)
    method.on_epoch_start(1)  # nothing allocated yet: a no-op
    method.perturb(model, x, y, batch_info(n=N, pad=PAD, epoch=6))
    buf, v = method.delta_buf.clone(), method.v_buf.clone()
    assert v.any()
    for epoch in (9, 11):
        method.on_epoch_start(epoch)
        assert torch.equal(method.delta_buf, buf)
    method.on_epoch_start(10)
    assert not torch.equal(method.delta_buf, buf)
    assert method.delta_buf.abs().max() <= EPS and method.delta_buf.min() < 0  # fresh U(−ε, ε), not box-clipped
    assert torch.equal(method.v_buf, v)
    reset = method.delta_buf.clone()
    method.on_epoch_start(20)  # the last epoch (epochs=20): no reset
    assert torch.equal(method.delta_buf, reset)


def test_attack_runs_in_eval_mode_by_default():
    model, (x, y) = tiny_net(bn=True), data()
    ATAS(eps=EPS).perturb(model, x, y, batch_info(n=N, pad=PAD))
    assert model[0].seen == [False] and model.training


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_state(dtype):
    model, (x, y) = tiny_net(bn=True), data()
    full, half = loaded_atas(), loaded_atas(state_dtype=dtype)
    want = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    assert half.delta_buf.dtype == want and half.v_buf.dtype == torch.float32
    b = batch_info(n=N, pad=PAD, epoch=6)
    x_full, x_half = full.perturb(model, x, y, b), half.perturb(model, x, y, b)
    tol = {"fp16": 1e-3, "bf16": 8e-3}[dtype] * EPS  # the stored δ is rounded once
    torch.testing.assert_close(x_half, x_full, rtol=0, atol=2 * tol)
    torch.testing.assert_close(half.delta_buf.float(), full.delta_buf, rtol=0, atol=tol)
    assert half.delta_buf.dtype == want  # the write-back kept the dtype
    restored = ATAS(eps=EPS)
    restored.load_state_dict(half.state_dict())  # the dtype travels with the hyper-parameters
    assert restored.state_dtype == dtype and restored.delta_buf.dtype == want
    half.on_epoch_start(10)  # reset draws in place, in the state dtype
    assert half.delta_buf.dtype == want and half.delta_buf.abs().max() <= EPS
    with pytest.raises(ValueError, match="state_dtype"):
        ATAS(eps=EPS, state_dtype="fp8")


def _run_epochs(method: ATAS, model, epochs=(4, 6, 10, 11)) -> list:
    """A few batches over warm-up, adaptive steps and a reset, from torch's global RNG seeded here."""
    torch.manual_seed(3)
    x, y = data()
    out = []
    for e in epochs:
        method.on_epoch_start(e)
        for seed in (2, 5):
            b = batch_info(n=N, pad=PAD, epoch=e, seed=seed)
            out.append(method.perturb(model, x, y, b))
            out.append(method.step_sizes())
    return out + [method.delta_buf, method.v_buf]


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_host_state_matches_device_state_bit_for_bit_on_cpu(dtype):
    model = tiny_net(bn=True)
    device, host = ATAS(eps=EPS, state_dtype=dtype), ATAS(eps=EPS, state_dtype=dtype, state_device="cpu")
    assert host.host_state and not device.host_state
    for a, b in zip(_run_epochs(device, model), _run_epochs(host, model), strict=True):
        assert torch.equal(a, b)
    assert host.hparams["state_device"] == "cpu" and "state_device='cpu'" in host.describe()


def test_host_state_checkpoints_round_trip_with_device_state():
    model, (x, y) = tiny_net(bn=True), data()
    host = ATAS(eps=EPS, state_device="cpu")
    host.load_state_dict(loaded_atas().state_dict())  # a device-state checkpoint: the placement stays this one's
    assert host.state_device == "cpu" and host.delta_buf.device.type == "cpu"
    b = batch_info(n=N, pad=PAD, epoch=6)
    want = loaded_atas().perturb(model, x, y, b)
    assert torch.equal(host.perturb(model, x, y, b), want)
    again = ATAS(eps=EPS)
    again.load_state_dict(host.state_dict())
    assert again.state_device is None and torch.equal(again.delta_buf, host.delta_buf)
    host.to("cpu")  # host state stays on the host whatever the device
    assert host.delta_buf.device.type == "cpu"


@pytest.mark.parametrize("bad", ["cuda", "host", 0])
def test_state_device_is_validated(bad):
    with pytest.raises(ValueError, match="state_device"):
        ATAS(eps=EPS, state_device=bad)
