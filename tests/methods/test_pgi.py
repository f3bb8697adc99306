"""FGSM-PGI against its official formulas (fzjcdt/FastAT_Benchmark `fast_at/fgsm_pgi.py`) and its buffers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastat.methods import FGSMPGI, build_method
from fastat.methods._frame import crop_params, window_index
from fastat.ops import reference

from ._helpers import EPS, batch_info, data, tiny_net


def test_pgi_step_wiring_matches_the_reference_op():
    """perturb: x₀ gathered from the prior (crop and flip followed), g at x₀, then the reference `pgi_step` on copies
    of the buffers gives the same x_adv and the same updated buffers."""
    model, (x, y) = tiny_net(bn=True), data()
    info = batch_info(crop=True)
    method = FGSMPGI(eps=EPS)
    method.generator = torch.Generator().manual_seed(3)
    method.prepare(info, x)
    prior, mom = method.delta_buf.clone(), method.mom_buf.clone()
    assert torch.equal(prior.abs(), torch.full_like(prior, EPS)) and not mom.any()  # ±ε start, zero momentum
    index, offsets, flips = crop_params(info, x)
    window = window_index(prior, index, offsets, flips, x.shape[2], x.shape[3])
    x0 = torch.clamp(x + prior[window], 0, 1)
    model.train()
    x0_in = x0.clone().requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(model(x0_in), y), x0_in)[0]
    torch.manual_seed(0)
    model_state = {k: v.clone() for k, v in model.state_dict().items()}
    x_adv = method.perturb(model, x, y, info)
    model.load_state_dict(model_state)
    want = reference.pgi_step(prior, mom, index, offsets, flips, grad, grad.abs().sum(), x0, x, eps=EPS, decay=0.3)
    torch.testing.assert_close(x_adv, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(method.delta_buf, prior, rtol=0, atol=1e-6)
    torch.testing.assert_close(method.mom_buf, mom)
    assert ((x_adv - x).abs() <= EPS + 1e-6).all()


def test_pgi_training_loss_trains_through_both_forwards():
    """CE(f(x_adv), y) + λ·MSE(f(x_adv), f(x₀)): the weights' gradient includes the path through f(x₀)."""
    model, (x, y) = tiny_net(), data()
    info = batch_info(crop=False, pad=0)
    method = FGSMPGI(eps=EPS, lam=10.0)
    x_adv = method.perturb(model, x, y, info)
    logits0 = method._logits0
    assert logits0 is not None and logits0.requires_grad
    loss, logits = method.train_loss(model, x, y, x_adv)
    w = next(model.parameters())
    got = torch.autograd.grad(loss, w, retain_graph=True)[0]
    want_loss = F.cross_entropy(logits, y) + 10.0 * F.mse_loss(logits, logits0)
    torch.testing.assert_close(loss, want_loss)
    through_adv_only = torch.autograd.grad(F.cross_entropy(logits, y) + 10.0 * F.mse_loss(logits, logits0.detach()),
                                           w, retain_graph=True)[0]
    torch.testing.assert_close(got, torch.autograd.grad(want_loss, w)[0])
    assert not torch.allclose(got, through_adv_only)  # the f(x₀) path carries gradient
    with pytest.raises(RuntimeError, match="call perturb"):
        method.train_loss(model, x, y, x_adv)  # the logits of perturb are used once


def test_pgi_buffers_reset_every_epochs_reset_epochs():
    model, (x, y) = tiny_net(), data()
    info = batch_info(crop=False, pad=0)
    method = build_method("fgsm_pgi", eps=EPS, epochs_reset=2)
    method.on_epoch_start(1)
    method.perturb(model, x, y, info)
    moved = method.delta_buf.clone()
    assert method.mom_buf.any()
    method.on_epoch_start(2)  # (2 − 1) % 2 != 0: kept
    assert torch.equal(method.delta_buf, moved) and method.mom_buf.any()
    method.on_epoch_start(3)  # redrawn: ±ε, momentum 0
    assert torch.equal(method.delta_buf.abs(), torch.full_like(moved, EPS)) and not method.mom_buf.any()


def test_pgi_hyper_parameters_are_checked():
    with pytest.raises(ValueError, match="'decay'"):
        FGSMPGI(eps=EPS, decay=1.5)
    with pytest.raises(ValueError, match="'lam'"):
        FGSMPGI(eps=EPS, lam=-1)
    with pytest.raises(ValueError, match="'epochs_reset'"):
        FGSMPGI(eps=EPS, epochs_reset=0)


def test_pgi_trains_and_resumes_with_its_buffers(tmp_path):
    from fastat.train import Trainer, TrainConfig, fit

    tiny = dict(dataset="fashion-mnist", eps=0.2, subset=128, batch_size=64, device="cpu", model="small-cnn",
                model_kwargs={"width": 8, "hidden": 32}, eval_n=32, eval_steps=2, co_batch=16, co_steps=1,
                progress=False, plot=False, on_diverge="log", epochs=2, out=str(tmp_path), co_check="pertalign")
    t = fit(method="fgsm_pgi", **tiny)
    assert t.method.delta_buf.shape == (128, 1, 28, 28) and t.method.mom_buf.any()
    resumed = Trainer(TrainConfig(method="fgsm_pgi", **tiny))
    assert resumed.resume() and resumed.epoch == 2
    assert torch.equal(resumed.method.delta_buf, t.method.delta_buf)
    assert torch.equal(resumed.method.mom_buf, t.method.mom_buf)


def test_pgi_host_state_matches_device_state():
    """state_device="cpu": the batch's rows travel, the ops address them as 0..B-1, and the result is the same as
    with the buffers beside the images (bit for bit on a CPU device)."""
    model, (x, y) = tiny_net(), data()
    runs = []
    for placement in (None, "cpu"):
        method = FGSMPGI(eps=EPS, state_device=placement)
        method.generator = torch.Generator().manual_seed(4)
        outs = [method.perturb(model, x, y, batch_info(crop=True, seed=s)) for s in (2, 5)]
        runs.append((outs, method.delta_buf.clone(), method.mom_buf.clone(), method.host_state))
    (a, da, ma, ha), (b, db, mb, hb) = runs
    assert not ha and hb
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert torch.equal(da, db) and torch.equal(ma, mb)
    with pytest.raises(ValueError, match="'state_device'"):
        FGSMPGI(eps=EPS, state_device="cuda")
