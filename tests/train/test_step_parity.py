"""fastat's `Trainer` takes the official training step: a plain PyTorch loop written from the official code (WONG
`train_fgsm.py:101-129` for FGSM and FGSM-RS, NF `train.py:216-243` for N-FGSM), fed the same initial weights, batches,
random starts and learning rates, lands on the same weights and BatchNorm statistics after every step.

This pins everything between the loader and the optimiser that the line-by-line reading of docs/results/yardstick.md
covers (BN in train mode for the attack and for the training forward, both updating the running statistics; the
projections; α; the batch-mean CE; SGD with momentum 0.9 and weight decay on every parameter; the last partial batch).
What it does not pin, by construction, are the random streams and the lr schedule: both are recorded from fastat's run
and replayed (the schedule has its own tests in test_train.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import fastat
from fastat.train import Trainer

SETTING = dict(dataset="fashion-mnist", eps=0.25, subset=200, batch_size=64, epochs=1, device="cpu",
               model="small-cnn", model_kwargs={"width": 8, "hidden": 32}, lr_max=0.05, eval_n=16, eval_steps=1,
               progress=False, plot=False, on_diverge="log", precision="fp32")


def _plain_step(model, opt, x, y, d0, lr, *, eps, alpha, clip_eps):
    """One step as the official code writes it: the attack forward and the training forward in train mode."""
    d = d0.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x + d), y)
    (g,) = torch.autograd.grad(loss, d)
    d = d.detach() + alpha * g.sign()
    if clip_eps:  # WONG: clamp(δ, −ε, ε), then clamp(δ, 0 − x, 1 − x); N-FGSM: the box only
        d = d.clamp(-eps, eps)
    d = torch.minimum(torch.maximum(d, -x), 1 - x)
    for group in opt.param_groups:
        group["lr"] = lr
    loss = F.cross_entropy(model(x + d), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("method, alpha, noise, clip_eps", [
    ("fgsm", 1.0, 0.0, True), ("fgsm_rs", 1.25, 1.0, True), ("n_fgsm", 1.0, 2.0, False)])
def test_the_trainer_takes_the_official_step(method, alpha, noise, clip_eps, monkeypatch):
    trainer = Trainer(method=method, **SETTING)
    plain = copy.deepcopy(trainer.model).train()
    opt = torch.optim.SGD(plain.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4, nesterov=False)
    eps = SETTING["eps"]

    starts: list[torch.Tensor] = []
    draw = fastat.ops.uniform_init
    attacking = []  # the evaluation draws starts too: record the method's only

    def recorded_draw(x, radius, **kw):
        d0 = draw(x, radius, **kw)
        if attacking:
            assert radius == pytest.approx(noise * eps)
            starts.append(d0.clone())
        return d0

    monkeypatch.setattr(fastat.ops, "uniform_init", recorded_draw)
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    perturb = trainer.method.perturb

    def recorded_perturb(model, x, y, info=None):
        batches.append((x.detach().clone(), y.clone()))
        attacking.append(True)
        try:
            return perturb(model, x, y, info)
        finally:
            attacking.pop()

    monkeypatch.setattr(trainer.method, "perturb", recorded_perturb)
    step = trainer.optimizer.step
    compared: list[int] = []

    def compared_step(*args, **kw):
        lr = float(trainer.optimizer.param_groups[0]["lr"])
        out = step(*args, **kw)
        x, y = batches[-1]
        d0 = starts[-1] if noise else torch.zeros_like(x)
        _plain_step(plain, opt, x, y, d0, lr, eps=eps, alpha=alpha * eps, clip_eps=clip_eps)
        theirs = plain.state_dict()
        for name, mine in trainer.model.state_dict().items():  # weights, BN running mean/var and batch counts
            torch.testing.assert_close(mine, theirs[name], rtol=1e-5, atol=1e-6,
                                       msg=lambda m, name=name: f"step {len(compared)}, {name}: {m}")
        compared.append(y.shape[0])
        return out

    monkeypatch.setattr(trainer.optimizer, "step", compared_step)
    trainer.fit()
    assert compared == [64, 64, 64, 8]  # every step compared, the last partial batch of 8 included
    assert len(starts) == (4 if noise else 0)
