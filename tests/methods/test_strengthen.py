"""`Method.strengthen` (the CO roll-back's remedy): every method turns a knob that really changes what it does next.

The check: perturb, restore the state, strengthen, perturb again from the same random numbers; the new x_adv (or,
for GradAlign, whose knob is the regulariser's λ, the regulariser; for FGSM-PGI the consistency term's λ) must
differ, and the log line must say what moved.
"""

from __future__ import annotations

import copy

import pytest
import torch

from fastat.methods import METHODS
from fastat.train.co_response import strengthen

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
    elif name == "fgsm_pgi":  # its knob weighs the consistency term of the training loss (test_pgi.py); the step is ε
        assert method.lam == pytest.approx(10 / 0.8)
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


def test_zerograd_raises_q_up_to_1_then_says_it_cannot():
    """q past 1 does not exist (at 1 every coordinate is zeroed): the roll-back stops with a clear message instead
    of turning another knob."""
    from fastat.methods.base import StrengthenLimit

    method = make("zerograd", q=0.8)
    assert strengthen(method) == "q 0.8 -> 0.9" and strengthen(method) == "q 0.9 -> 1"
    with pytest.raises(StrengthenLimit, match="q 1 \\+ q_step 0.1 would pass 1"):
        strengthen(method)
    assert method.q == 1.0


@pytest.mark.parametrize("name, bad", [("zerograd", {"q": 1.5}), ("fgsm_rs", {"alpha": 0.0}),
                                       ("atas", {"step_min": 1.0}), ("gradalign", {"lam": -1.0}),
                                       ("multigrad", {"threshold": 9}), ("pgd", {"steps": 0})])
def test_every_change_goes_through_the_one_check(name, bad):
    """Construction, `set_hparams` (strengthen, the trainer's roll-back) and `load_state_dict` share `check_hparams`;
    a refused change leaves the method as it was."""
    method = make(name)
    before = dict(method.hparams)
    with pytest.raises(ValueError):
        method.set_hparams(**bad)
    state = method.state_dict()
    state["hparams"].update(bad)
    with pytest.raises(ValueError):
        method.load_state_dict(state)
    assert method.hparams == before
    with pytest.raises(ValueError):
        type(method)(eps=method.eps, **{k: v for k, v in before.items() if k in bad} | bad)
