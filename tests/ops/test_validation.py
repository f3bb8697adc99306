"""Bad arguments raise ValueError/TypeError naming the argument, on every backend, before any kernel runs."""

from __future__ import annotations

import pytest
import torch

import fastat
from fastat import ops


def _x(b=2, c=1, h=4, w=4):
    return torch.rand(b, c, h, w)


def _atas(**over):
    x = _x()
    args = dict(delta_buf=torch.zeros(5, 1, 8, 8), v_buf=torch.zeros(5), index=torch.tensor([0, 4]),
                offsets=torch.tensor([[0, 4], [2, 2]]), flips=torch.tensor([True, False]), grad=torch.randn_like(x),
                x_adv=x.clone(), x=x)
    kw = dict(eps=0.1, c=0.01, beta=0.5, gamma_over_c=0.06, step_min=0.01, step_max=0.05, warmup=False)
    for k, v in over.items():
        (args if k in args else kw)[k] = v
    return args, kw


def _pgi(**over):
    args, _ = _atas()
    del args["v_buf"]
    args = dict(delta_buf=args.pop("delta_buf"), mom_buf=torch.zeros(5, 1, 8, 8), **args)
    args["grad_l1"] = args["grad"].abs().sum()
    args = {k: args[k] for k in ("delta_buf", "mom_buf", "index", "offsets", "flips", "grad", "grad_l1", "x_adv", "x")}
    kw = dict(eps=0.1, decay=0.3)
    for k, v in over.items():
        (args if k in args else kw)[k] = v
    return args, kw


def _pgi_call(**over):
    args, kw = _pgi(**over)
    return ops.pgi_step(**args, **kw)


CASES = [
    # (callable, exception, argument name in the message)
    (lambda: ops.zerograd_step(_x(), _x(), _x(), 0.1, 0.2, 1.5), ValueError, "q"),
    (lambda: ops.zerograd_step(_x(), _x(), _x(), 0.1, 0.2, -0.1), ValueError, "q"),
    (lambda: ops.zerograd_step(_x(), _x(), _x(), 0.0, 0.2, 0.3), ValueError, "eps"),
    (lambda: ops.zerograd_step(_x(), _x(), _x(), -1.0, 0.2, 0.3), ValueError, "eps"),
    (lambda: ops.zerograd_step(_x(), _x(), _x(), 0.1, 0.0, 0.3), ValueError, "alpha"),
    (lambda: ops.zerograd_step(_x(), _x(), _x(), float("nan"), 0.1, 0.3), ValueError, "eps"),
    (lambda: ops.zerograd_step(_x(), _x(3), _x(), 0.1, 0.2, 0.3), ValueError, "grad"),
    (lambda: ops.zerograd_step(_x(), _x().double(), _x(), 0.1, 0.2, 0.3), TypeError, "grad"),
    (lambda: ops.zerograd_step(_x(), _x().long(), _x(), 0.1, 0.2, 0.3), TypeError, "grad"),
    (lambda: ops.zerograd_step(_x(), [1.0], _x(), 0.1, 0.2, 0.3), TypeError, "grad"),
    (lambda: ops.zerograd_step(_x(), _x(), _x().half(), 0.1, 0.2, 0.3), TypeError, "x"),
    (lambda: ops.zerograd_step(_x(), _x(), _x(), "0.1", 0.2, 0.3), TypeError, "eps"),
    (lambda: ops.pgd_step(_x(), _x(), _x(), 0.1, 0.2, active=torch.ones(3, dtype=torch.bool)), ValueError, "active"),
    (lambda: ops.pgd_step(_x(), _x(), _x(), 0.1, 0.2, active=torch.ones(2)), TypeError, "active"),
    (lambda: ops.pgd_step(_x(), _x(), _x(), 0.1, -0.2), ValueError, "alpha"),
    (lambda: ops.multigrad_step(_x(), _x(), 0.1, 0.2), ValueError, "grads"),
    (lambda: ops.multigrad_step(torch.randn(3, 2, 1, 4, 4), _x(), 0.1, 0.2, threshold=4), ValueError, "threshold"),
    (lambda: ops.multigrad_step(torch.randn(3, 2, 1, 4, 4), _x(), 0.1, 0.2, threshold=0), ValueError, "threshold"),
    (lambda: ops.multigrad_step(torch.randn(3, 3, 1, 4, 4), _x(), 0.1, 0.2), ValueError, "grads"),
    (lambda: ops.uniform_init(_x(), 0.0), ValueError, "eps"),
    (lambda: ops.uniform_init(_x().long(), 0.1), TypeError, "x"),
    (lambda: ops.uniform_init(_x().to("meta"), 0.1, generator=torch.Generator()), ValueError, "generator"),
    (lambda: ops.sora_step(_x(), _x(), _x(), 0.1), TypeError, "alpha"),  # a device tensor, not a float
    (lambda: ops.sora_step(_x(), _x(), _x(), torch.tensor([0.1])), ValueError, "alpha"),
    (lambda: ops.sora_step(_x(), _x(), _x(), torch.tensor(1)), TypeError, "alpha"),
    (lambda: ops.sora_step(_x(), _x(), _x(), torch.tensor(0.1, dtype=torch.float64)), TypeError, "alpha"),
    (lambda: ops.sora_step(_x(), _x(), _x(), torch.tensor(0.1, device="meta")), ValueError, "alpha"),
    (lambda: ops.sora_step(_x(), _x(3), _x(), torch.tensor(0.1)), ValueError, "grad"),
    (lambda: ops.sora_step(_x(), _x(), _x(3), torch.tensor(0.1)), ValueError, "x"),
    (lambda: ops.sora_step(_x(), _x().long(), _x(), torch.tensor(0.1)), TypeError, "grad"),
    (lambda: ops.sora_step(_x(), _x(), _x().half(), torch.tensor(0.1)), TypeError, "x"),
    (lambda: ops.sora_step([0.0], _x(), _x(), torch.tensor(0.1)), TypeError, "delta"),
    (lambda: ops.sora_step(_x(), _x(), _x(), torch.tensor(0.1), generator=0), TypeError, "generator"),
    (lambda: ops.sora_step(*(_x().to("meta"),) * 3, torch.tensor(0.1, device="meta"), generator=torch.Generator()),
     ValueError, "generator"),
    (lambda: ops.atas_step(**_atas(index=torch.tensor([0, 5]))[0], **_atas()[1]), ValueError, "index"),
    (lambda: ops.atas_step(**_atas(index=torch.tensor([-1, 0]))[0], **_atas()[1]), ValueError, "index"),
    (lambda: ops.atas_step(**_atas(offsets=torch.tensor([[0, 5], [0, 0]]))[0], **_atas()[1]), ValueError, "offsets"),
    (lambda: ops.atas_step(**_atas(offsets=torch.tensor([[0, 4]]))[0], **_atas()[1]), ValueError, "offsets"),
    (lambda: ops.atas_step(**_atas(index=torch.tensor([0, 1], dtype=torch.int32))[0], **_atas()[1]), TypeError, "index"),
    (lambda: ops.atas_step(**_atas(flips=torch.tensor([1, 0]))[0], **_atas()[1]), TypeError, "flips"),
    (lambda: ops.atas_step(**_atas(v_buf=torch.zeros(4))[0], **_atas()[1]), ValueError, "v_buf"),
    (lambda: ops.atas_step(**_atas(delta_buf=torch.zeros(5, 1, 7, 8))[0], **_atas()[1]), ValueError, "delta_buf"),
    (lambda: ops.atas_step(**_atas(delta_buf=torch.zeros(5, 2, 8, 8))[0], **_atas()[1]), ValueError, "delta_buf"),
    (lambda: ops.atas_step(**_atas(delta_buf=torch.zeros(5, 1, 8, 8).transpose(2, 3))[0], **_atas()[1]), ValueError,
     "delta_buf"),
    (lambda: ops.atas_step(**_atas()[0], **_atas(beta=1.5)[1]), ValueError, "beta"),
    (lambda: ops.atas_step(**_atas()[0], **_atas(step_min=0.1, step_max=0.05)[1]), ValueError, "step_min"),
    (lambda: ops.atas_step(**_atas()[0], **_atas(c=0.0)[1]), ValueError, "c"),
    (lambda: ops.atas_step(**_atas()[0], **_atas(eps=-0.1)[1]), ValueError, "eps"),
    # pixel-unit scalars near the float32 maximum overflowed to NaN inside the fp32 kernels
    (lambda: ops.pgd_step(_x(), _x(), _x(), 3.4e38, 0.1), ValueError, "eps"),
    (lambda: ops.pgd_step(_x(), _x(), _x(), 0.1, 3.4e38), ValueError, "alpha"),
    (lambda: ops.zerograd_step(_x(), _x(), _x(), 0.1, float("inf"), 0.3), ValueError, "alpha"),
    (lambda: ops.uniform_init(_x(), 2e6), ValueError, "eps"),
    (lambda: ops.atas_step(**_atas()[0], **_atas(step_max=3e38)[1]), ValueError, "step_max"),
    # in-place buffers that require grad: refused by every backend (the native one used to write into them)
    (lambda: ops.atas_step(**_atas(delta_buf=torch.zeros(5, 1, 8, 8, requires_grad=True))[0], **_atas()[1]),
     ValueError, "delta_buf"),
    (lambda: ops.atas_step(**_atas(v_buf=torch.zeros(5, requires_grad=True))[0], **_atas()[1]), ValueError, "v_buf"),
    (lambda: _pgi_call(grad_l1=torch.ones(1)), ValueError, "grad_l1"),  # 0-dim only
    (lambda: _pgi_call(grad_l1=torch.tensor(3)), TypeError, "grad_l1"),
    (lambda: _pgi_call(grad_l1=3.0), TypeError, "grad_l1"),
    (lambda: _pgi_call(grad_l1=torch.tensor(3.0, device="meta")), ValueError, "grad_l1"),
    (lambda: _pgi_call(mom_buf=torch.zeros(5, 1, 8, 6)), ValueError, "mom_buf"),
    (lambda: _pgi_call(mom_buf=torch.zeros(5, 1, 8, 8, dtype=torch.bfloat16)), TypeError, "mom_buf"),
    (lambda: _pgi_call(mom_buf=torch.zeros(5, 1, 8, 8).transpose(2, 3)), ValueError, "mom_buf"),
    (lambda: _pgi_call(mom_buf=torch.zeros(5, 1, 8, 8, requires_grad=True)), ValueError, "mom_buf"),
    (lambda: _pgi_call(delta_buf=torch.zeros(5, 1, 8, 8, requires_grad=True)), ValueError, "delta_buf"),
    (lambda: _pgi_call(index=torch.tensor([0, 5])), ValueError, "index"),
    (lambda: _pgi_call(offsets=torch.tensor([[0, 5], [0, 0]])), ValueError, "offsets"),
    (lambda: _pgi_call(x_adv=_x().half()), TypeError, "x_adv"),
    (lambda: _pgi_call(grad=_x(3)), ValueError, "grad"),
    (lambda: _pgi_call(decay=1.5), ValueError, "decay"),
    (lambda: _pgi_call(decay=float("nan")), ValueError, "decay"),
    (lambda: _pgi_call(eps=0.0), ValueError, "eps"),
    (lambda: ops.atas_gather(torch.zeros(5, 1, 8, 8), torch.tensor([0, 1]), torch.tensor([[0, 0], [9, 0]]),
                             torch.tensor([False, False]), _x()), ValueError, "offsets"),
    (lambda: ops.atas_gather(torch.zeros(5, 1, 8, 8), torch.tensor([0, 1]), torch.tensor([[0, 0], [0, 0]]),
                             torch.tensor([False, False]), _x(3)), ValueError, "index"),
]


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_bad_arguments_are_named(case, backend):
    fn, exc, name = CASES[case]
    with fastat.ops.use_backend(backend), pytest.raises(exc, match=rf"argument[s]? '{name}'|'{name}'"):
        fn()


def test_value_checks_follow_fastat_debug_on_cuda_only(monkeypatch):
    from fastat.ops import _validate

    cpu = torch.zeros(1)
    assert _validate.values_checked(cpu)
    monkeypatch.setenv("FASTAT_DEBUG", "1")
    assert _validate.values_checked(cpu)


def test_empty_batch_is_fine():
    x = torch.rand(0, 1, 4, 4)
    assert ops.pgd_step(x, x, x, 0.1, 0.1).shape == x.shape


def test_one_dimensional_rows_are_samples_of_one_element_on_every_backend():
    """(B,) tensors are B samples of one element: zerograd_step agrees bit for bit across backends (the reference
    used to raise a bare IndexError)."""
    torch.manual_seed(0)
    d, g, x = torch.zeros(7), torch.randn(7), torch.rand(7)
    want = ops.reference.zerograd_step(d[:, None], g[:, None], x[:, None], 0.1, 0.2, 0.35)[:, 0]
    for backend in ops.available_backends():
        with ops.use_backend(backend):
            assert torch.equal(ops.zerograd_step(d, g, x, 0.1, 0.2, 0.35), want), backend


def test_meta_tensors_get_shapes_not_cuda_errors():
    """Value checks skip meta tensors (no values) instead of asking CUDA whether a capture is running."""
    meta = dict(device="meta")
    buf, x = torch.zeros(4, 1, 6, 6, **meta), torch.zeros(2, 1, 4, 4, **meta)
    idx, off = torch.zeros(2, dtype=torch.int64, **meta), torch.zeros(2, 2, dtype=torch.int64, **meta)
    flips = torch.zeros(2, dtype=torch.bool, **meta)
    assert ops.atas_gather(buf, idx, off, flips, x).shape == x.shape
    out = ops.atas_step(buf, torch.zeros(4, **meta), idx, off, flips, x, x, x, eps=0.1, c=0.01, beta=0.5,
                        gamma_over_c=0.06, step_min=0.01, step_max=0.05, warmup=False)
    assert out.shape == x.shape and out.device.type == "meta"
    out = ops.pgi_step(buf, torch.zeros_like(buf), idx, off, flips, x, torch.zeros((), **meta), x, x, eps=0.1,
                       decay=0.3)
    assert out.shape == x.shape and out.device.type == "meta"
