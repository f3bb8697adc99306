"""Methods under bf16 autocast on the CPU (the trainer's `--precision bf16` path, also how CUDA runs it): the attack
stays in fp32 — x_adv fp32, in the ball and the box, gradients reaching the model and APART's scalars — and agrees
with the fp32 attack on almost every coordinate (autocast only changes the forward's precision, so a step's sign can
flip only where the gradient is tiny)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastat.methods import METHODS

from ._helpers import ROUND, batch_info, data, tiny_net
from .test_common import make, radius


def _step(name: str, autocast: bool):
    model, (x, y) = tiny_net(bn=True), data(b=32)
    b = batch_info(b=32, n=40, epoch=7)
    method = make(name)
    torch.manual_seed(5)  # the same random starts and buffers in both precisions
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        x_adv = method.perturb(model, x, y, b)
        loss = nn.functional.cross_entropy(model(x_adv).float(), y)
        reg = method.extra_loss(model, x, y, x_adv, b)
    (loss if reg is None else loss + reg.float()).backward()
    return model, method, x, x_adv


@pytest.mark.parametrize("name", list(METHODS))
def test_bf16_autocast_keeps_the_attack_in_fp32_and_close_to_it(name):
    model, method, x, x_adv = _step(name, autocast=True)
    assert x_adv.dtype == torch.float32
    assert (x_adv - x).abs().max() <= radius(method) + ROUND and x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad is not None for p in method.parameters())
    for value in method.state_dict().values():
        assert not isinstance(value, torch.Tensor) or value.dtype in (torch.float32, torch.int64)
    _, _, _, reference = _step(name, autocast=False)
    same = (x_adv.detach() == reference.detach()).float().mean().item()
    assert same >= 0.8, f"{name}: only {same:.2%} of x_adv's coordinates match the fp32 attack"
