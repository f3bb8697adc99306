"""Properties every method must have: the ball, the box, dtype, no weight gradients, BN mode restored, registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastat.batch import BatchInfo
from fastat.methods import METHODS, Method, build_method

from ._helpers import EPS, ROUND, batch_info, data, tiny_net

HPARAMS = {"gradalign": {"lam": 0.2}}  # ε = 0.1 is beyond the official λ table


def make(name: str, **kw) -> Method:
    return build_method(name, eps=EPS, **{**HPARAMS.get(name, {}), **kw})


def radius(method: Method) -> float:
    return method.radius if hasattr(method, "radius") else method.eps


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("epoch", [1, 7])
def test_x_adv_in_ball_and_box(name, epoch):
    model, (x, y) = tiny_net(bn=True), data()
    method = make(name)
    x_adv = method.perturb(model, x, y, batch_info(epoch=epoch))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    dist = (x_adv - x).abs().max().item()
    assert dist <= radius(method) + ROUND
    assert x_adv.requires_grad == (name == "apart")  # APART's x_adv carries the graph of its step-size scalars
    if name not in ("apart",):
        assert dist > 0.5 * method.eps  # it moved


@pytest.mark.parametrize("name", list(METHODS))
def test_first_batch_outside_the_pixel_box_is_refused(name):
    """0..255 images or normalised inputs are the classic mistake (normalisation belongs inside the model)."""
    model, (x, y) = tiny_net(), data()
    for bad in (x * 255, x - 0.5, torch.where(x > 0.5, float("nan"), x)):
        with pytest.raises(ValueError, match=r"argument 'x' must be images in \[0, 1\]"):
            make(name).perturb(model, bad, y, batch_info())
    method = make(name)
    method.perturb(model, x, y, batch_info())  # checked once: later batches are not read on the host
    method.perturb(model, x * 255, y, batch_info())


def test_n_fgsm_reaches_beyond_eps_but_within_3eps():
    model, (x, y) = tiny_net(), data(b=32)
    method = make("n_fgsm")
    assert method.radius == pytest.approx(3 * EPS)
    d = (method.perturb(model, x, y) - x).abs()
    assert d.max() > EPS + 1e-3 and d.max() <= 3 * EPS + ROUND


@pytest.mark.parametrize("name", list(METHODS))
def test_perturb_builds_no_parameter_gradients(name):
    model, (x, y) = tiny_net(bn=True), data()
    frozen = model[1].bias
    frozen.requires_grad_(False)  # a parameter the user froze stays frozen
    method = make(name)
    method.perturb(model, x, y, batch_info())
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is None for p in method.parameters())
    assert [p.requires_grad for p in model.parameters()] == [p is not frozen for p in model.parameters()]


@pytest.mark.parametrize("name", list(METHODS))
def test_perturb_works_under_no_grad_and_autocast(name):
    model, (x, y) = tiny_net(bn=True), data()
    method = make(name)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = method.perturb(model, x, y, batch_info(epoch=7))
    assert x_adv.dtype == torch.float32 and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= radius(method) + ROUND


DEFAULT_MODES = {"atas": "eval"}


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("mode", [None, "train", "eval", "keep"])
@pytest.mark.parametrize("start", ["train", "eval", "mixed"])
def test_attack_bn_mode_applied_and_restored(name, mode, start):
    model, (x, y) = tiny_net(bn=True), data()
    model.train(start != "eval")
    if start == "mixed":
        model[2].eval()  # the BN layer alone in eval mode
    before = [m.training for m in model.modules()]
    method = make(name, attack_bn_mode=mode)
    expected = mode or DEFAULT_MODES.get(name, "train")
    assert method.attack_bn_mode == expected
    method.perturb(model, x, y, batch_info())
    seen = model[0].seen
    assert seen, "the attack ran no forward pass"
    if expected == "keep":
        assert all(s == before[1] for s in seen)
    else:
        assert all(s == (expected == "train") for s in seen)
    assert [m.training for m in model.modules()] == before


@pytest.mark.parametrize("name", ["atas", "apart"])
def test_state_dict_round_trip(name):
    model, (x, y) = tiny_net(), data()
    first = make(name)
    assert all(v is None for k, v in first.state_dict().items() if k in ("delta_buf", "v_buf", "omega"))
    for epoch in (6, 7):  # ATAS past warm-up: v is non-zero
        xa = first.perturb(model, x, y, batch_info(epoch=epoch))
        nn.functional.cross_entropy(model(xa), y).backward()  # APART updates ω in the training backward
    state = first.state_dict()
    second = make(name)
    second.load_state_dict({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()})
    for key, value in second.state_dict().items():
        assert key == "hparams" or torch.equal(value, state[key]), key
    torch.manual_seed(5)
    a = first.perturb(model, x, y, batch_info(epoch=8, seed=9))
    torch.manual_seed(5)
    b = second.perturb(model, x, y, batch_info(epoch=8, seed=9))
    assert torch.equal(a, b)
    for key, value in second.state_dict().items():
        assert key == "hparams" or torch.equal(value, first.state_dict()[key]), key


def test_load_state_dict_rejects_unknown_keys():
    with pytest.raises(KeyError, match="unexpected \\['bogus'\\]"):
        make("atas").load_state_dict({"delta_buf": None, "v_buf": None, "bogus": 1})
    with pytest.raises(KeyError, match="missing \\['v_buf'\\]"):
        make("atas").load_state_dict({"delta_buf": None})
    with pytest.raises(KeyError, match="does not take: \\['qq'\\]"):
        make("zerograd").load_state_dict({"hparams": {"qq": 1}})


def test_state_dict_carries_changed_hyper_parameters():
    method = make("zerograd")
    method.q = 0.55  # a trainer's roll-back
    state = method.state_dict()
    assert state == {"hparams": {"alpha": 2 * EPS, "q": 0.55, "zero_iters": 1}}
    fresh = make("zerograd")
    fresh.load_state_dict(state)
    assert fresh.q == 0.55 and fresh.hparams == method.hparams


@pytest.mark.parametrize("name", list(METHODS))
def test_same_seed_same_x_adv(name):
    model, (x, y) = tiny_net(), data()
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(make(name).perturb(model, x, y, batch_info(epoch=7)))
    assert torch.equal(outs[0], outs[1])


def test_build_method_defaults_and_aliases():
    eps = 8 / 255
    assert build_method("fgsm", eps=eps).alpha == pytest.approx(eps)
    assert build_method("FGSM-RS", eps=eps).alpha == pytest.approx(1.25 * eps)
    assert build_method("n-fgsm", eps=eps).alpha == pytest.approx(eps)
    assert build_method("nfgsm", eps=eps).noise_scale == 2.0
    assert build_method("zerograd", eps=eps).alpha == pytest.approx(2 * eps)
    assert build_method("zerograd", eps=eps).q == 0.35
    mg = build_method("multigrad", eps=eps)
    assert (mg.alpha, mg.starts, mg.threshold, mg.batched) == (pytest.approx(2 * eps), 3, None, True)
    assert build_method("pgd-at", eps=eps).alpha == pytest.approx(eps / 4)
    assert build_method("pgd", eps=eps).steps == 10
    ga = build_method("grad_align", eps=eps)
    assert ga.lam == 0.2 and ga.alpha == pytest.approx(1.25 * eps) and ga.init == "zero"
    at = build_method("atas", eps=eps)
    assert (at.c, at.beta, at.warmup_epochs, at.reset_every) == (0.01, 0.5, 5, 10)
    assert (at.gamma_over_c, at.step_min, at.step_max) == (16 / 255, 4 / 255, 14 / 255)
    rel = build_method("atas", eps=0.2, relative_to_eps=True)
    assert (rel.gamma_over_c, rel.step_min, rel.step_max) == pytest.approx((0.4, 0.1, 0.35))
    ap = build_method("apart", eps=eps)
    assert [p.item() for p in ap.parameters()] == pytest.approx([1e-4, 1e-4])


def test_build_method_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown method 'fsgm'; known: fgsm, fgsm_rs"):
        build_method("fsgm", eps=0.1)
    with pytest.raises(TypeError, match="has no hyper-parameter 'qq'"):
        build_method("zerograd", eps=0.1, qq=0.5)
    with pytest.raises(ValueError, match="argument 'q' must be in"):
        build_method("zerograd", eps=0.1, q=1.5)
    with pytest.raises(ValueError, match="argument 'eps' must be a finite number > 0"):
        build_method("fgsm", eps=0.0)
    with pytest.raises(ValueError, match="argument 'attack_bn_mode'"):
        build_method("fgsm", eps=0.1, attack_bn_mode="frozen")
    with pytest.raises(ValueError, match="argument 'threshold'"):
        build_method("multigrad", eps=0.1, threshold=4)
    with pytest.raises(ValueError, match="argument 'batch'"):
        build_method("atas", eps=0.1).perturb(tiny_net(), *data())


def test_hparams_and_describe_are_live():
    method = build_method("zerograd", eps=0.1)
    method.q = 0.7  # e.g. a trainer's roll-back raising q
    assert method.hparams == {"method": "zerograd", "eps": 0.1, "attack_bn_mode": "train", "alpha": 0.2, "q": 0.7,
                              "zero_iters": 1}
    assert method.describe().startswith("zerograd(eps=0.1, attack_bn_mode='train', alpha=0.2, q=0.7")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", list(METHODS))
def test_training_step_on_cuda_under_bf16_autocast(name):
    model, (x, y) = tiny_net(bn=True).cuda(), data()
    x, y = x.cuda(), y.cuda()
    b = batch_info(epoch=7)
    b = BatchInfo(index=b.index.cuda(), num_examples=b.num_examples, pad=b.pad, offsets=b.offsets.cuda(),
                  flips=b.flips.cuda(), epoch=b.epoch)
    method = make(name)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        x_adv = method.perturb(model, x, y, b)
        loss = nn.functional.cross_entropy(model(x_adv).float(), y)
        reg = method.extra_loss(model, x, y, x_adv, b)
    (loss if reg is None else loss + reg).backward()
    assert x_adv.device == x.device and x_adv.dtype == torch.float32
    assert (x_adv - x).abs().max() <= radius(method) + ROUND and x_adv.min() >= 0 and x_adv.max() <= 1
    for value in method.state_dict().values():
        assert not isinstance(value, torch.Tensor) or value.device == x.device
    assert all(p.device == x.device and p.grad is not None for p in method.parameters())
