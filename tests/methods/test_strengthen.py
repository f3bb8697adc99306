"""`Method.strengthen` (the CO roll-back's remedy): every method turns a knob that really changes what it does next.

The check: perturb, restore the state, strengthen, perturb again from the same random numbers; the new x_adv (or,
for GradAlign, whose knob is the regulariser's λ, the regulariser) must differ, and the log line must say what moved.
"""

from __future__ import annotations

import copy

import pytest
import torch

from fastat.methods import METHODS
from fastat.train.monitor import strengthen

from ._helpers import batch_info, data, tiny_net
from .test_common import make


def _attack(method, model, x, y):
    method.generator = torch.Generator().manual_seed(0)
    info = batch_info(epoch=7)  # past ATAS's warm-up, where its adaptive step sizes apply
    x_adv = method.perturb(model, x, y, info)
    reg = method.extra_loss(model, x, y, x_adv, info)
    return x_adv.detach(), None if reg is None else reg.detach()


@pytest.mark.filterwarnings("ignore:APART:UserWarning")  # the two perturbs are not followed by a training step
@pytest.mark.parametrize("name", list(METHODS))
def test_strengthen_changes_the_next_attack(name):
    model, (x, y) = tiny_net(bn=True), data()
    method = make(name)
    state = copy.deepcopy(method.state_dict())
    before, reg_before = _attack(method, model, x, y)
    method.load_state_dict(copy.deepcopy(state))
    change = strengthen(method)
    after, reg_after = _attack(method, model, x, y)
    assert change and change != "no hyper-parameter to change"
    if name == "gradalign":
        assert method.lam == pytest.approx(0.2 / 0.8) and reg_after > reg_before * 1.2
    else:
        assert not torch.equal(before, after), change
    # the change travels in the checkpointed state, so a resumed run keeps it
    fresh = make(name)
    fresh.load_state_dict(copy.deepcopy(method.state_dict()))
    assert fresh.hparams == method.hparams


@pytest.mark.parametrize("name, knob", [("multigrad", "alpha"), ("fgsm", "alpha"), ("gradalign", "alpha")])
def test_an_alpha_above_eps_is_first_brought_down_to_the_step_it_takes(name, knob):
    """MultiGrad (α = 2ε), FGSM and GradAlign step from δ = 0 and clip to ε: lowering 2ε to 1.6ε would do nothing."""
    kw = {"lam": 0.0} if name == "gradalign" else {}
    method = make(name, alpha=2 * 0.1, **kw)
    strengthen(method, alpha_factor=0.8)
    assert getattr(method, knob) == pytest.approx(0.08)


def test_fgsm_rs_lowers_its_own_alpha():
    method = make("fgsm_rs")  # random start: α = 1.25ε above ε still matters
    strengthen(method, alpha_factor=0.8)
    assert method.alpha == pytest.approx(0.1)


def test_zerograd_raises_q_until_1_then_lowers_alpha():
    method = make("zerograd", q=0.95)
    assert strengthen(method) == "q 0.95 -> 1"
    assert strengthen(method).startswith("alpha ")
