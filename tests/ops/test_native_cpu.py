"""Tests specific to the C++ CPU kernels (`torch.ops.fastat.<op>` on CPU tensors, csrc/cpu/*.cpp).

Registration (opcheck), the C++ argument checks when the ops are called directly (bypassing fastat.ops' Python
validation), index/offset range checks, determinism, independence from the thread count, and exact-parity spot checks
against fastat.ops.reference on the cases that are easy to get wrong. The generic parity sweep is test_parity.py.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from fastat.ops import _native, reference
from fastat.ops._schemas import RANDOM_OPS, SCHEMAS

if _native.load_error() is not None:
    pytest.skip(f"fastat._C is unavailable: {_native.load_error()}", allow_module_level=True)

F = torch.ops.fastat
EPS, ALPHA = 8 / 255, 10 / 255
ATAS_KW = dict(eps=EPS, c=0.01, beta=0.5, gamma_over_c=16 / 255, step_min=4 / 255, step_max=14 / 255)
PGI_KW = dict(eps=EPS, decay=0.3)
MUTATING = ("atas_step", "pgi_step")  # both write their first two arguments


def assert_exact(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def make(shape: tuple[int, ...], layout: str = "contiguous", dtype: torch.dtype = torch.float32, *,
         kind: str = "unit", gen: torch.Generator | None = None) -> torch.Tensor:
    """A random tensor of ``shape`` in ``layout`` (contiguous | channels_last | strided): values in [0, 1) ("unit"),
    centred ("delta") or normal ("grad")."""
    full = (*shape[:-1], 2 * shape[-1]) if layout == "strided" else shape
    t = {"unit": torch.rand, "delta": torch.rand, "grad": torch.randn}[kind](full, generator=gen)
    if kind == "delta":
        t = (t - 0.5) * (4 * EPS)
    t = t.to(dtype)
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        t = t[..., ::2]
    return t


@contextlib.contextmanager
def num_threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def atas_args(batch=4, n=6, chans=3, size=5, pad=2, buf_dtype=torch.float32, dtype=torch.float32, grad_dtype=None,
              layout="contiguous"):
    """(delta_buf, v_buf, index, offsets, flips, grad, x_adv, x) for the ATAS ops; index has no repeats."""
    g = torch.Generator().manual_seed(batch * 1000 + n)
    shape = (batch, chans, size, size)
    delta_buf = make((n, chans, size + 2 * pad, size + 2 * pad), kind="delta", dtype=buf_dtype, gen=g)
    v_buf = torch.rand(n, generator=g) * 3
    index = torch.randperm(n, generator=g)[:batch]
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=g)
    offsets[0] = torch.tensor([0, 2 * pad])  # the extreme corners
    flips = torch.rand(batch, generator=g) < 0.5
    grad = make(shape, layout, grad_dtype or dtype, kind="grad", gen=g)
    x = make(shape, layout, dtype, gen=g)
    x_adv = (x.float() + make(shape, layout, kind="delta", gen=g)).clamp(0, 1).to(dtype)
    return delta_buf, v_buf, index, offsets, flips, grad, x_adv, x


def pgi_args(batch=4, n=6, chans=3, size=5, pad=2, buf_dtype=torch.float32, dtype=torch.float32, grad_dtype=None,
             layout="contiguous"):
    """(delta_buf, mom_buf, index, offsets, flips, grad, grad_l1, x_adv, x): atas_args' windows and inputs, a momentum
    of the size of g/‖g‖₁ (both terms of m decide its sign) and ‖g‖₁ of the batch."""
    delta_buf, _, index, offsets, flips, grad, x_adv, x = atas_args(batch, n, chans, size, pad, buf_dtype, dtype,
                                                                    grad_dtype, layout)
    g = torch.Generator().manual_seed(batch * 1000 + n + 1)
    mom_buf = (torch.randn(delta_buf.shape, generator=g) * 3 / max(1, x.numel())).to(buf_dtype)
    return delta_buf, mom_buf, index, offsets, flips, grad, grad.float().abs().sum(), x_adv, x


def samples() -> list[tuple[str, tuple, dict]]:
    shape = (4, 3, 5, 5)
    d, g, x = make(shape, kind="delta"), make(shape, kind="grad"), make(shape)
    dc, gc, xc = (t.contiguous(memory_format=torch.channels_last) for t in (d, g, x))
    atas = atas_args()
    pgi = pgi_args()
    return [
        ("zerograd_step", (d, g, x, EPS, ALPHA, 0.35), {}),
        ("zerograd_step", (dc, gc.bfloat16(), xc, EPS, ALPHA, 1.0), {}),
        ("multigrad_step", (make((3, *shape), kind="grad"), x, EPS, ALPHA, None), {}),
        ("multigrad_step", (make((2, *shape), kind="grad"), xc, EPS, ALPHA, 1), {}),
        ("pgd_step", (d, g, x, EPS, ALPHA, None), {}),
        ("pgd_step", (dc, gc, xc, EPS, ALPHA, torch.tensor([True, False, True, True])), {}),
        ("atas_gather", (atas[0], atas[2], atas[3], atas[4], atas[7]), {}),
        ("atas_step", atas, dict(ATAS_KW, warmup=False)),
        ("atas_step", atas, dict(ATAS_KW, warmup=True)),
        ("pgi_step", pgi, PGI_KW),
        ("uniform_init", (xc, EPS), dict(generator=torch.Generator().manual_seed(0))),
        ("sora_step", (d, g, x, torch.tensor(ALPHA)), dict(generator=torch.Generator().manual_seed(0))),
        ("sora_step", (dc.half(), gc.bfloat16(), xc.half(), torch.tensor(ALPHA, dtype=torch.bfloat16)),
         dict(generator=torch.Generator().manual_seed(0))),
    ]


# --------------------------------------------------------------------------------------------------- registration


@pytest.mark.parametrize("op", sorted(SCHEMAS))
def test_cpu_kernel_registered(op):
    assert getattr(F, op).default.has_kernel_for_dispatch_key("CPU")
    assert _native.has_kernel(op, "cpu")


@pytest.mark.parametrize("name,args,kwargs", samples(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args, kwargs):
    # The random ops: the AOT test compares two calls that draw different numbers, so they are left out there.
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if name not in RANDOM_OPS:
        utils += ("test_aot_dispatch_dynamic",)
    torch.library.opcheck(getattr(F, name), args, kwargs, test_utils=utils)


# ----------------------------------------------------------------------------------------- C++ argument checks

_S = (4, 3, 5, 5)
_T = make(_S)
_BAD_METADATA = [
    ("zerograd_step", (_T, make((4, 3, 5, 4)), _T, EPS, ALPHA, 0.5), ValueError, "'grad'"),
    ("zerograd_step", (_T, _T, _T.half(), EPS, ALPHA, 0.5), TypeError, "'x'"),
    ("zerograd_step", (_T, _T.double(), _T, EPS, ALPHA, 0.5), TypeError, "'grad'"),
    ("zerograd_step", (_T, _T, _T, EPS, ALPHA, 1.5), ValueError, "'q'"),
    ("zerograd_step", (_T, _T, _T, EPS, ALPHA, float("nan")), ValueError, "'q'"),
    ("zerograd_step", (_T, _T, _T, 0.0, ALPHA, 0.5), ValueError, "'eps'"),
    ("zerograd_step", (torch.zeros(4, 0),) * 3 + (EPS, ALPHA, 0.5), ValueError, "'delta'"),  # empty samples
    ("zerograd_step", (torch.zeros(()),) * 3 + (EPS, ALPHA, 0.5), ValueError, "'delta'"),  # 0-D
    ("pgd_step", (_T, _T, _T, EPS, float("inf"), None), ValueError, "'alpha'"),
    ("pgd_step", (_T, _T, _T, EPS, ALPHA, torch.ones(3, dtype=torch.bool)), ValueError, "'active'"),
    ("pgd_step", (_T, _T, _T, EPS, ALPHA, torch.ones(4)), TypeError, "'active'"),
    ("multigrad_step", (make((2, 4, 3, 5, 4)), _T, EPS, ALPHA, None), ValueError, "'grads'"),
    ("multigrad_step", (make((4,)), make((4,)), EPS, ALPHA, None), ValueError, "'grads'"),
    ("multigrad_step", (make((2, *_S)), _T, EPS, ALPHA, 0), ValueError, "'threshold'"),
    ("multigrad_step", (make((2, *_S)), _T, EPS, ALPHA, 3), ValueError, "'threshold'"),
    ("multigrad_step", (make((2, *_S)).int(), _T, EPS, ALPHA, None), TypeError, "'grads'"),
    ("uniform_init", (_T, -1.0), ValueError, "'eps'"),
    ("uniform_init", (_T.int(), EPS), TypeError, "'x'"),
    ("sora_step", (_T, make((4, 3, 5, 4)), _T, torch.tensor(ALPHA)), ValueError, "'grad'"),
    ("sora_step", (_T, _T, _T[:3], torch.tensor(ALPHA)), ValueError, "'x'"),
    ("sora_step", (_T, _T, _T.half(), torch.tensor(ALPHA)), TypeError, "'x'"),
    ("sora_step", (_T.int(), _T, _T, torch.tensor(ALPHA)), TypeError, "'delta'"),
    ("sora_step", (_T, _T.double(), _T, torch.tensor(ALPHA)), TypeError, "'grad'"),
    ("sora_step", (_T, _T, _T, torch.tensor([ALPHA])), ValueError, "'alpha'"),  # 0-dim only
    ("sora_step", (_T, _T, _T, torch.tensor(ALPHA, dtype=torch.float64)), TypeError, "'alpha'"),
    ("sora_step", (_T, _T, _T, torch.tensor(1)), TypeError, "'alpha'"),
    ("sora_step", (_T, _T, _T, torch.tensor(ALPHA, device="meta")), ValueError, "'alpha'"),
]


def _atas_bad():
    buf, v, idx, off, flp, g, xa, x = atas_args()
    base = dict(delta_buf=buf, v_buf=v, index=idx, offsets=off, flips=flp, grad=g, x_adv=xa, x=x)

    def gather(**kw):
        a = {**base, **kw}
        return "atas_gather", (a["delta_buf"], a["index"], a["offsets"], a["flips"], a["x"]), {}

    def step(scalars=None, **kw):
        return "atas_step", tuple({**base, **kw}.values()), dict(ATAS_KW, warmup=False, **(scalars or {}))

    return [
        (*gather(index=idx.int()), TypeError, "'index'"),
        (*gather(index=idx[:3]), ValueError, "'index'"),
        (*gather(offsets=torch.zeros(4, 3, dtype=torch.long)), ValueError, "'offsets'"),
        (*gather(flips=flp.float()), TypeError, "'flips'"),
        (*gather(delta_buf=buf.transpose(2, 3)), ValueError, "'delta_buf'"),  # not contiguous
        (*gather(delta_buf=buf[:, :, :8, :8].contiguous()), ValueError, "'delta_buf'"),  # odd padding
        (*gather(delta_buf=buf[:, :2].contiguous()), ValueError, "'delta_buf'"),  # channels
        (*gather(x=x[0]), ValueError, "'x'"),
        (*step(v_buf=v.double()), TypeError, "'v_buf'"),
        (*step(v_buf=v[:5]), ValueError, "'v_buf'"),
        (*step(grad=g[:, :, :4]), ValueError, "'grad'"),
        (*step(x_adv=xa.half()), TypeError, "'x_adv'"),
        (*step(dict(beta=1.5)), ValueError, "'beta'"),
        (*step(dict(step_min=0.5)), ValueError, "'step_min'"),
        (*step(dict(c=float("nan"))), ValueError, "'c'"),
    ]


def _pgi_bad():
    buf, mom, idx, off, flp, g, l1, xa, x = pgi_args()
    base = dict(delta_buf=buf, mom_buf=mom, index=idx, offsets=off, flips=flp, grad=g, grad_l1=l1, x_adv=xa, x=x)

    def step(scalars=None, **kw):
        return "pgi_step", tuple({**base, **kw}.values()), dict(PGI_KW, **(scalars or {}))

    return [
        (*step(index=idx.int()), TypeError, "'index'"),
        (*step(delta_buf=buf.transpose(2, 3)), ValueError, "'delta_buf'"),
        (*step(mom_buf=mom.transpose(2, 3)), ValueError, "'mom_buf'"),
        (*step(mom_buf=mom[:, :, :8].contiguous()), ValueError, "'mom_buf'"),
        (*step(mom_buf=mom.half()), TypeError, "'mom_buf'"),
        (*step(grad_l1=l1[None]), ValueError, "'grad_l1'"),
        (*step(grad_l1=l1.double()), TypeError, "'grad_l1'"),
        (*step(grad=g[:, :, :4]), ValueError, "'grad'"),
        (*step(x_adv=xa.half()), TypeError, "'x_adv'"),
        (*step(dict(decay=-0.5)), ValueError, "'decay'"),
        (*step(dict(decay=float("nan"))), ValueError, "'decay'"),
        (*step(dict(eps=0.0)), ValueError, "'eps'"),
    ]


@pytest.mark.parametrize("name,args,kwargs,exc,arg",
                         [(n, a, {}, e, m) for n, a, e, m in _BAD_METADATA] + _atas_bad() + _pgi_bad(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_direct_call_bad_metadata_raises(name, args, kwargs, exc, arg):
    with pytest.raises(exc, match=f"^fastat.{name}: .*{arg}"):
        getattr(F, name)(*args, **kwargs)


@pytest.mark.parametrize("op", ["atas_gather", "atas_step", "pgi_step"])
@pytest.mark.parametrize("bad", ["index=N", "index=-1", "offsets=2p+1", "offsets=-1"])
def test_out_of_range_index_and_offsets_raise(op, bad):
    buf, v, idx, off, flp, g, xa, x = atas_args()
    mom = torch.rand(buf.shape)
    arg, value = bad.split("=")
    if arg == "index":
        idx = idx.clone()
        idx[2] = buf.shape[0] if value == "N" else -1
    else:
        off = off.clone()
        off[3, 1] = buf.shape[2] - x.shape[2] + 1 if value == "2p+1" else -1
    buf_before, v_before, mom_before = buf.clone(), v.clone(), mom.clone()
    with pytest.raises(ValueError, match=f"'{arg}'"):
        if op == "atas_gather":
            F.atas_gather(buf, idx, off, flp, x)
        elif op == "atas_step":
            F.atas_step(buf, v, idx, off, flp, g, xa, x, **ATAS_KW, warmup=False)
        else:
            F.pgi_step(buf, mom, idx, off, flp, g, g.abs().sum(), xa, x, **PGI_KW)
    assert torch.equal(buf, buf_before) and torch.equal(v, v_before)  # nothing was written before the check
    assert torch.equal(mom, mom_before)


# -------------------------------------------------------------------------------- determinism and thread count


def _call(name, args, kwargs):
    """Run the op on fresh copies of its tensor arguments (atas_step and pgi_step mutate two); return every output."""
    args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
    kwargs = dict(kwargs)
    if "generator" in kwargs:
        kwargs["generator"] = torch.Generator().manual_seed(1234)
    out = getattr(F, name)(*args, **kwargs)
    return (out, args[0], args[1]) if name in MUTATING else (out,)


def _big_samples():
    """Inputs large enough that at::parallel_for splits them across two threads."""
    shape = (160, 3, 16, 16)
    d, g, x = make(shape, kind="delta"), make(shape, kind="grad"), make(shape)
    atas = atas_args(batch=96, n=128, size=16, pad=4)
    pgi = pgi_args(batch=96, n=128, size=16, pad=4)
    return [
        ("zerograd_step", (d, g, x, EPS, ALPHA, 0.35), {}),
        ("multigrad_step", (make((3, *shape), kind="grad"), x, EPS, ALPHA, 2), {}),
        ("pgd_step", (d, g, x, EPS, ALPHA, torch.rand(160) < 0.5), {}),
        ("atas_gather", (atas[0], atas[2], atas[3], atas[4], atas[7]), {}),
        ("atas_step", atas, dict(ATAS_KW, warmup=False)),
        ("pgi_step", pgi, PGI_KW),
        ("uniform_init", (x, EPS), dict(generator=None)),
        ("sora_step", (d, g, x, torch.tensor(ALPHA)), dict(generator=None)),
    ]


@pytest.mark.parametrize("name,args,kwargs", _big_samples(), ids=lambda v: v if isinstance(v, str) else "")
def test_deterministic_and_thread_count_independent(name, args, kwargs):
    with num_threads(1):
        one = _call(name, args, kwargs)
    with num_threads(2):
        two = _call(name, args, kwargs)
        again = _call(name, args, kwargs)
    for a, b, c in zip(one, two, again):
        assert torch.equal(a, b) and torch.equal(b, c)


# ---------------------------------------------------------------------------------- exact parity spot checks

LAYOUTS = ["contiguous", "channels_last", "strided"]


def _zerograd_grad(shape, dtype, layout):
    """Gradients with ties, an all-zero row, a row with a NaN and a row with an infinity."""
    g = torch.randint(-3, 4, shape).float() * 0.25
    g[1] = torch.randn(shape[1:])
    g[2] = 0.0
    if shape[0] > 4:
        g[3].view(-1)[5] = float("nan")
        g[4].view(-1)[:3] = float("inf")
    g = g.to(dtype)
    if layout == "channels_last":
        return g.contiguous(memory_format=torch.channels_last)
    return torch.cat([g, g], dim=-1)[..., ::2] if layout == "strided" else g


@pytest.mark.parametrize("q", [0.0, 0.35, 0.7, 1.0])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype,grad_dtype", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                              (torch.bfloat16, torch.float16), (torch.float16, torch.float32)])
def test_zerograd_matches_reference(q, layout, dtype, grad_dtype):
    shape = (7, 3, 4, 5)
    d, x = make(shape, layout, dtype, kind="delta"), make(shape, layout, dtype)
    g = _zerograd_grad(shape, grad_dtype, layout)
    out = F.zerograd_step(d, g, x, EPS, ALPHA, q)
    assert_exact(out, reference.zerograd_step(d, g, x, EPS, ALPHA, q))
    assert out.stride() == torch.empty_like(d).stride()


@pytest.mark.parametrize("n", [1, 2, 3, 784, 3072, 150528])
def test_zerograd_row_lengths_and_random_quantiles(n):
    gen = torch.Generator().manual_seed(n)
    rows = 9 if n < 10000 else 3  # 150528: ImageNet's 3x224x224
    g = torch.randn(rows, n, generator=gen) * torch.rand(rows, 1, generator=gen) * 10
    d, x = make((rows, n), kind="delta", gen=gen), make((rows, n), gen=gen)
    for q in [0.0, 1.0, *torch.rand(4, generator=gen).tolist()]:
        assert_exact(F.zerograd_step(d, g, x, EPS, ALPHA, q), reference.zerograd_step(d, g, x, EPS, ALPHA, q))


def test_zerograd_imagenet_rows_with_ties_zeros_and_nan():
    """Rows of 150528 (3x224x224): few distinct magnitudes (ties at the threshold), an all-zero row, scattered exact
    zeros, a NaN (that row keeps nothing), a row of one repeated value."""
    gen = torch.Generator().manual_seed(5)
    n = 150528
    g = torch.round(torch.randn(5, n, generator=gen) * 2) / 2
    g[1] = 0
    g[2, torch.rand(n, generator=gen) < 0.5] = 0
    g[3, 12345] = float("nan")
    g[4] = -0.25
    d, x = make((5, n), kind="delta", gen=gen), make((5, n), gen=gen)
    for q in (0.35, 0.7, 0.5):
        assert_exact(F.zerograd_step(d, g, x, EPS, ALPHA, q), reference.zerograd_step(d, g, x, EPS, ALPHA, q))


@pytest.mark.parametrize("threshold", [None, 1, 2])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype,grad_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float16)])
def test_multigrad_matches_reference(threshold, layout, dtype, grad_dtype):
    shape = (5, 3, 4, 4)
    grads = torch.randint(-1, 2, (3, *shape)).float() * torch.rand(3, *shape)  # many exact zeros
    grads[0, 0, 0, 0, :2] = float("nan")
    grads = grads.to(grad_dtype)
    if layout == "channels_last":
        grads = torch.stack([gs.contiguous(memory_format=torch.channels_last) for gs in grads])
    elif layout == "strided":
        grads = grads.transpose(-1, -2)
    x = make(shape, layout, dtype)
    if layout == "strided":
        x = x.transpose(-1, -2)
    out = F.multigrad_step(grads, x, EPS, ALPHA, threshold)
    assert_exact(out, reference.multigrad_step(grads, x, EPS, ALPHA, threshold))
    assert out.stride() == torch.empty_like(x).stride()


@pytest.mark.parametrize("with_active", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype,grad_dtype", [(torch.float32, torch.float32), (torch.float16, torch.bfloat16)])
def test_pgd_matches_reference(with_active, layout, dtype, grad_dtype):
    shape = (6, 3, 4, 5)
    d, x = make(shape, layout, dtype, kind="delta"), make(shape, layout, dtype)
    g = make(shape, layout, grad_dtype, kind="grad")
    g[1, :, 0, 1] = 0.0
    g[0, 0, 0, :2] = float("nan")
    d[1, 0, 0, 0] = float("nan")
    x[2, 1, 1, 1] = float("nan")
    active = torch.tensor([True, False, True, True, False, True]) if with_active else None
    assert_exact(F.pgd_step(d, g, x, EPS, ALPHA, active), reference.pgd_step(d, g, x, EPS, ALPHA, active))


@pytest.mark.parametrize("buf_dtype,dtype,grad_dtype", [(torch.float32, torch.float32, torch.float32),
                                                        (torch.bfloat16, torch.float32, torch.float16),
                                                        (torch.float16, torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_atas_gather_matches_reference(buf_dtype, dtype, grad_dtype, layout):
    buf, _, idx, off, flp, _, _, x = atas_args(batch=5, n=7, size=6, buf_dtype=buf_dtype, dtype=dtype, layout=layout)
    assert_exact(F.atas_gather(buf, idx, off, flp, x), reference.atas_gather(buf, idx, off, flp, x))


@pytest.mark.parametrize("warmup", [False, True])
@pytest.mark.parametrize("buf_dtype,dtype,grad_dtype", [(torch.float32, torch.float32, torch.float32),
                                                        (torch.bfloat16, torch.float32, torch.float16),
                                                        (torch.float16, torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_atas_step_matches_reference(warmup, buf_dtype, dtype, grad_dtype, layout):
    args = atas_args(batch=5, n=7, size=6, buf_dtype=buf_dtype, dtype=dtype, grad_dtype=grad_dtype, layout=layout)
    args[5][1, 0, 0, :3] = 0.0  # sign(0) = 0: no move there
    ours = [a.clone() for a in args]
    ref = [a.clone() for a in args]
    out = F.atas_step(*ours, **ATAS_KW, warmup=warmup)
    expected = reference.atas_step(*ref, **ATAS_KW, warmup=warmup)
    assert_exact(out, expected)
    assert_exact(ours[0], ref[0])  # delta_buf windows, and nothing outside them
    assert_exact(ours[1], ref[1])  # v_buf
    assert out.stride() == torch.empty_like(args[6]).stride()


@pytest.mark.parametrize("decay", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("buf_dtype,dtype,grad_dtype", [(torch.float32, torch.float32, torch.float32),
                                                        (torch.bfloat16, torch.float32, torch.float16),
                                                        (torch.float16, torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_pgi_step_matches_reference(decay, buf_dtype, dtype, grad_dtype, layout):
    args = list(pgi_args(batch=5, n=7, size=6, buf_dtype=buf_dtype, dtype=dtype, grad_dtype=grad_dtype,
                         layout=layout))
    args[5][1, 0, 0, :3] = 0.0  # sign(0) = 0: no move there
    args[1][args[2][1], 0, :, :] = 0  # with a zero momentum too: no move of the prior either
    args[6] = args[5].float().abs().sum()
    ours = [a.clone() for a in args]
    ref = [a.clone() for a in args]
    out = F.pgi_step(*ours, eps=EPS, decay=decay)
    assert_exact(out, reference.pgi_step(*ref, eps=EPS, decay=decay))
    assert_exact(ours[0], ref[0])  # delta_buf windows, and nothing outside them
    assert_exact(ours[1], ref[1])  # mom_buf windows
    assert out.stride() == torch.empty_like(args[7]).stride()


@pytest.mark.parametrize("batch_grad", ["zero", "nan", "bf16_l1"])
def test_pgi_step_whole_batch_cases_match_reference(batch_grad):
    """‖g‖₁ = 0 (0/0 = NaN momentum everywhere), a NaN in g (NaN ‖g‖₁), and a bf16 ‖g‖₁ (widened to fp32 first)."""
    args = list(pgi_args(batch=3, n=5, size=4))
    if batch_grad == "zero":
        args[5] = torch.zeros_like(args[5])
    elif batch_grad == "nan":
        args[5][2, 1, 1, 1] = float("nan")
    args[6] = args[5].abs().sum().to(torch.bfloat16 if batch_grad == "bf16_l1" else torch.float32)
    ours = [a.clone() for a in args]
    ref = [a.clone() for a in args]
    assert_exact(F.pgi_step(*ours, **PGI_KW), reference.pgi_step(*ref, **PGI_KW))
    assert_exact(ours[0], ref[0])
    assert_exact(ours[1], ref[1])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_uniform_init_matches_reference_draw(layout, dtype):
    x = make((3, 3, 4, 5), layout, dtype)
    x[0, 0, 0, :2] = 0.0
    ours = F.uniform_init(x, EPS, generator=torch.Generator().manual_seed(7))
    assert_exact(ours, reference.uniform_init(x, EPS, generator=torch.Generator().manual_seed(7)))
    torch.manual_seed(3)
    ours = F.uniform_init(x[0], EPS)  # the global generator
    torch.manual_seed(3)
    assert_exact(ours, reference.uniform_init(x[0], EPS))


# ------------------------------------------------------------------------------------------------------ sora_step


def _sora_both(delta, grad, x, alpha, seed=7):
    """(C++ kernel, reference) drawn from two generators in the same state; both advance it alike."""
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    ours = F.sora_step(delta, grad, x, alpha, generator=g1)
    want = reference.sora_step(delta, grad, x, alpha, generator=g2)
    assert torch.equal(g1.get_state(), g2.get_state())  # the same numbers drawn
    return ours, want


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype,grad_dtype", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                              (torch.bfloat16, torch.float16), (torch.float16, torch.float32)])
def test_sora_step_matches_reference_draw(layout, dtype, grad_dtype):
    """Bit for bit the reference for the same generator state, in every layout (u follows the logical order: the
    result is contiguous) and dtype pair; also from the global generator."""
    shape = (3, 3, 4, 5)
    x = make(shape, layout, dtype)
    x[0, 0, 0, :2] = torch.tensor([0.0, 1.0])  # the box's edges
    d = make(shape, layout, dtype, kind="delta")
    g = _zerograd_grad(shape, grad_dtype, layout)  # ties, an all-zero row, NaN and inf entries
    for alpha in (torch.tensor(2 * EPS), torch.tensor(0.0), torch.tensor(2 * EPS, dtype=torch.float16)):
        ours, want = _sora_both(d, g, x, alpha)
        assert_exact(ours, want)
        assert ours.is_contiguous()
    torch.manual_seed(3)
    ours = F.sora_step(d[0], g[0], x[0], torch.tensor(ALPHA))  # the global generator
    torch.manual_seed(3)
    assert_exact(ours, reference.sora_step(d[0], g[0], x[0], torch.tensor(ALPHA)))


def test_sora_step_edge_cases():
    """Zero and NaN gradients give no step (δ only re-projected), α = 0 gives box(δ), x at 0 and 1 bound the box,
    NaN in δ propagates; 0-D and empty tensors."""
    x = torch.tensor([[0.0, 1.0, 0.5, 0.5, 0.0, 1.0, 0.5, 0.25]])
    d = torch.tensor([[-0.1, 0.1, 0.05, -0.05, 0.1, -0.1, float("nan"), 0.2]])
    g = torch.tensor([[-1.0, 1.0, 0.0, float("nan"), 1.0, -1.0, 1.0, -0.0]])
    a = torch.tensor(0.3)
    ours, want = _sora_both(d, g, x, a)
    assert_exact(ours, want)
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(7))  # the same draw
    box = torch.minimum(torch.maximum(d, -x), 1 - x)
    assert ours[0, 0] == 0 and ours[0, 1] == 0  # stepped out of the box at x = 0 and x = 1
    assert torch.equal(ours[0, 2:4], box[0, 2:4])  # sign(0) = sign(NaN) = 0: δ stays
    assert torch.equal(ours[0, 7:], box[0, 7:])  # sign(-0) = 0
    assert ours[0, 4] == d[0, 4] + a * u[0, 4] and ours[0, 5] == d[0, 5] - a * u[0, 5]  # inside the box
    assert ours[0, 6].isnan()
    zero_alpha, _ = _sora_both(d, g, x, torch.tensor(0.0))
    assert_exact(zero_alpha, box)
    for shape in ((), (0,), (0, 3, 4, 4), (5, 0)):
        t = torch.full(shape, 0.5)
        ours, want = _sora_both(t, t, t, a)
        assert_exact(ours, want)
        assert ours.shape == shape


def test_sora_step_draw_order_is_torch_rand():
    """u is torch.rand's draw: the op equals box(δ + α·torch.rand(x.shape)·sign(g)) written out in torch (as SORA
    wrote its step before the op) and leaves the generator where torch.rand leaves it."""
    x, d, g = make((4, 3, 5, 5)), make((4, 3, 5, 5), kind="delta"), make((4, 3, 5, 5), kind="grad")
    alpha = torch.tensor(2 * EPS)
    gen, ref_gen = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    out = F.sora_step(d, g, x, alpha, generator=gen)
    u = torch.rand(x.shape, generator=ref_gen)
    assert_exact(out, torch.clamp(d + alpha * u * g.sign(), -x, 1 - x))
    assert torch.equal(gen.get_state(), ref_gen.get_state())
