"""The Triton kernels (`torch.ops.fastat_triton.*`) against the reference, plus their registration.

Run on CPU in the interpreter, in its own process (the variable must precede the first triton import):
    TRITON_INTERPRET=1 python -m pytest -q -m triton tests/ops/test_triton_kernels.py
On a GPU machine the same file runs the compiled kernels on CUDA tensors, plus the `cuda`-marked full-size cases.
Exact ops are compared with torch.equal / assert_close(rtol=0, atol=0, equal_nan=True). The interpreter is slow
(~0.3 s per ZeroGrad row), so shapes stay small; the multi-tile paths are reached by shrinking the tile knobs.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import fastat
import fastat_kernels
from fastat.ops import reference as R
from fastat_kernels import _triton

if not (_triton.interpret() or torch.cuda.is_available()):
    pytest.skip("Triton kernels need TRITON_INTERPRET=1 or a CUDA device", allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from fastat_kernels import _common as C  # noqa: E402
from fastat_kernels import zerograd_step as zg  # noqa: E402

pytestmark = [
    pytest.mark.triton,
    # numpy notes inf - inf and overflowing casts inside the interpreter; those values are what the tests feed it.
    pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter"),
]
DEV = "cpu" if _triton.interpret() else "cuda"
EXACT_STEP = DEV == "cpu"  # torch on CUDA divides by a scalar as a product with its reciprocal (ATAS α: a few ulp)
OPS = ("zerograd_step", "multigrad_step", "atas_gather", "atas_step", "pgi_step", "pgd_step")
PGI_KW = dict(eps=8 / 255, decay=0.3)
ATAS_KW = dict(eps=8 / 255, c=0.01, beta=0.5, gamma_over_c=16 / 255, step_min=4 / 255, step_max=14 / 255)
cuda_only = pytest.mark.skipif(DEV != "cuda", reason="full-size rows need a GPU")


def op(name: str):
    return fastat_kernels.get(name)


@contextlib.contextmanager
def poisoned_allocations():
    """torch.empty/empty_like return NaN-filled (or -1) memory, so that an element a kernel forgets to write shows."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan") if t.is_floating_point() else -1) if t.dtype != torch.bool else t.fill_(True)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "empty", lambda *a, **k: poison(real_empty(*a, **k)))
        patch.setattr(torch, "empty_like", lambda *a, **k: poison(real_empty_like(*a, **k)))
        yield


def check(name: str, *args) -> torch.Tensor:
    """`fastat_triton::<name>` equals the reference on ``args`` (ops that mutate nothing); returns the result."""
    with poisoned_allocations():
        out = op(name)(*args)
    assert_same(out, getattr(R, name)(*args))
    return out


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of a few dozen elements, so that small rows take the chunked, split and multi-tile paths."""
    monkeypatch.setenv("FASTAT_TRITON_AUTOTUNE", "0")  # on a GPU, use these tiles rather than tuned ones
    monkeypatch.setattr(C, "FUSE_MAX_N", 100)
    monkeypatch.setattr(C, "ROW_BLOCK", 128)
    monkeypatch.setattr(C, "TILE_BLOCK", 128)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(shape, lo=0.0, hi=1.0, seed=0, dtype=torch.float32):
    return (torch.rand(shape, generator=gen(seed)) * (hi - lo) + lo).to(dtype).to(DEV)


def grad_rows(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """One kind of row each: plain, ties, all zero, a NaN, ±inf, signed zeros, subnormal scale."""
    g = torch.randn(rows, cols, generator=gen(seed))
    kinds = [
        lambda r: r,
        lambda r: torch.round(r * 2) / 4,
        lambda r: torch.zeros_like(r),
        lambda r: torch.where(torch.arange(cols) == cols // 2, float("nan"), r),
        lambda r: torch.where(torch.arange(cols) % 3 == 0, float("inf") * torch.sign(r), r),
        lambda r: torch.where(r > 0, 0.0, -0.0) + torch.round(r).clamp(-1, 1) * (torch.arange(cols) % 2),
        lambda r: r * 1e-40,
    ]
    return torch.stack([kinds[i % len(kinds)](g[i]) for i in range(rows)]).to(DEV)


def attack_inputs(shape, dtype=torch.float32, seed=0):
    eps = 8 / 255
    return rand(shape, -eps, eps, seed, dtype), rand(shape, 0, 1, seed + 1, dtype)


# ------------------------------------------------------------------------------------------------- element helpers


@triton.jit
def _fma_kernel(a_ptr, b_ptr, c_ptr, out_ptr, n, INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    a, b, c = tl.load(a_ptr + offs, mask=m), tl.load(b_ptr + offs, mask=m), tl.load(c_ptr + offs, mask=m)
    tl.store(out_ptr + offs, C.fma_f32(a, b, c, INTERPRET), mask=m)


@triton.jit
def _cast_kernel(src_ptr, out_ptr, n, INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    v = C.load_f32(src_ptr + offs, m, INTERPRET)
    tl.store(out_ptr + offs, C.cast_to(v, out_ptr.dtype.element_ty, INTERPRET), mask=m)


def _nearest_f32(exact: Fraction) -> np.float32:
    """Round-to-nearest-even of an exact rational to fp32 (checks the neighbours of a first guess)."""
    guess = np.float32(float(exact))
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    return min(candidates, key=lambda v: (abs(Fraction(float(v)) - exact), int(np.array(v).view(np.uint32)) & 1))


def test_fma_is_one_rounding():
    """fma_f32 rounds a·b + c once. The first triple is a double-rounding trap: a·b = 2^-24 − 2^-47 − 2^-70 below a
    midpoint of c = 1 + 2^-23, where both the plain fp32 form and a plain fp64 sum give 1 + 2^-22."""
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(512) * 2.0 ** rng.integers(-20, 20, 512)).astype(np.float32)
    b = (rng.standard_normal(512) * 2.0 ** rng.integers(-20, 20, 512)).astype(np.float32)
    c = (rng.standard_normal(512) * 2.0 ** rng.integers(-20, 20, 512)).astype(np.float32)
    a[0], b[0], c[0] = 1 + 2.0 ** -23, 2.0 ** -24 * (1 - 2.0 ** -23), 1 + 2.0 ** -23
    out = torch.empty(512, device=DEV)
    ta, tb, tc = (torch.from_numpy(v).to(DEV) for v in (a, b, c))
    _fma_kernel[(1,)](ta, tb, tc, out, 512, C.interpreting(), BLOCK=512, enable_fp_fusion=False)
    expected = [_nearest_f32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))) for x, y, z in zip(a, b, c)]
    assert out.cpu().numpy().tolist() == [float(v) for v in expected]
    assert np.float32(a[0] * b[0] + c[0]) != expected[0]  # the trap would catch an unfused form


def test_bf16_and_fp16_conversions_match_torch():
    """fp32 -> bf16/fp16 rounds to nearest even and bf16/fp16 -> fp32 is exact, subnormals, inf and NaN included."""
    specials = [1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -(1 + 2 ** -8), 3.3961e38, 3.3895e38, 65520.0,
                float("inf"), float("-inf"), float("nan"), 1e-40, -1e-42, 0.0, -0.0, 255.99, 2 ** -133, 1e-8]
    src = torch.cat([torch.tensor(specials), torch.randn(4000, generator=gen(1)) * 2.0 ** torch.randint(
        -30, 30, (4000,), generator=gen(2))]).to(DEV)
    for dtype in (torch.bfloat16, torch.float16):
        out = torch.empty(src.shape, dtype=dtype, device=DEV)
        _cast_kernel[(triton.cdiv(src.numel(), 1024),)](src, out, src.numel(), C.interpreting(), BLOCK=1024)
        assert_same(out, src.to(dtype))
        back = torch.empty(src.shape, device=DEV)
        _cast_kernel[(triton.cdiv(src.numel(), 1024),)](out, back, src.numel(), C.interpreting(), BLOCK=1024)
        assert_same(back, out.float())


# ------------------------------------------------------------------------------------------------------ zerograd


@pytest.mark.parametrize("q", [0.0, 0.35, 0.7, 1.0])
@pytest.mark.parametrize("rows,cols", [(1, 1), (7, 1), (1, 3), (7, 3), (1, 784), (7, 784), (1, 3072), (7, 3072)])
def test_zerograd_step_parity(rows, cols, q):
    g = grad_rows(rows, cols)
    delta, x = attack_inputs((rows, cols))
    check("zerograd_step", delta, g, x, 8 / 255, 16 / 255, q)


def test_zerograd_tau_equals_torch_quantile():
    """τ itself, bit for bit, on rows whose values span many scales (the mask alone rarely exposes a 1-ulp τ)."""
    rows, cols = 12, 37
    g = torch.randn(rows, cols, generator=gen(3)) * 10.0 ** torch.randint(-4, 5, (rows, 1), generator=gen(4))
    g = g.to(DEV)
    for q in (0.123, 0.35, 0.7):
        k_lo, coef, use_hi, need_hi = zg._plan(cols, q)
        tau = torch.empty(rows, device=DEV)
        zg._zerograd_tau_kernel[(rows,)](g, tau, k_lo, coef, cols, use_hi, need_hi, C.interpreting(), BLOCK=128,
                                         enable_fp_fusion=False)
        expected = torch.quantile(g.abs(), q, dim=1)
        assert torch.equal(tau.view(torch.int32), expected.view(torch.int32)), q


@pytest.mark.parametrize("dtype,grad_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                              (torch.float32, torch.bfloat16)])
def test_zerograd_step_dtypes(dtype, grad_dtype):
    g = grad_rows(7, 192, seed=5).to(grad_dtype)
    delta, x = attack_inputs((7, 3, 8, 8), dtype)
    g = g.view(7, 3, 8, 8)
    check("zerograd_step", delta, g, x, 8 / 255, 16 / 255, 0.35)


@pytest.mark.parametrize("q", [0.35, 1.0])
def test_zerograd_step_chunked_and_split(small_tiles, q):
    g = grad_rows(7, 300, seed=6)
    delta, x = attack_inputs((7, 300))
    expected = R.zerograd_step(delta, g, x, 8 / 255, 16 / 255, q)
    with poisoned_allocations():
        assert_same(op("zerograd_step")(delta, g, x, 8 / 255, 16 / 255, q), expected)  # split: τ kernel, then tiles
        C.FUSE_MAX_N = 1000
        assert_same(op("zerograd_step")(delta, g, x, 8 / 255, 16 / 255, q), expected)  # fused, 3 chunks per pass


def test_zerograd_step_layouts():
    shape = (3, 3, 8, 8)
    g = grad_rows(3, 192, seed=7).view(shape)
    delta, x = attack_inputs(shape)
    cl = torch.channels_last
    cases = {
        "channels_last": (delta.to(memory_format=cl), g.to(memory_format=cl), x.to(memory_format=cl)),
        "mixed": (delta.to(memory_format=cl), g, x),
        "batch_inner": (delta.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3), g, x),
        "strided": (torch.cat([delta, delta], 3)[..., ::2], g.transpose(2, 3).contiguous().transpose(2, 3), x),
    }
    for name, (d, gg, xx) in cases.items():
        out = check("zerograd_step", d, gg, xx, 8 / 255, 16 / 255, 0.35)
        assert out.stride() == torch.empty_like(d).stride(), name
    again = op("zerograd_step")(d, gg, xx, 8 / 255, 16 / 255, 0.35)
    assert torch.equal(out, again)  # deterministic


# ------------------------------------------------------------------------------------------------------ pgd / multigrad


@pytest.mark.parametrize("rows,cols", [(1, 1), (7, 3), (7, 784), (2, 3072)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pgd_step_parity(rows, cols, dtype):
    g = grad_rows(rows, cols, seed=8)
    delta, x = attack_inputs((rows, cols), dtype)
    active = torch.arange(rows, device=DEV) % 3 != 1
    for act in (None, active, active[:1].expand(rows)):
        check("pgd_step", delta, g, x, 8 / 255, 2 / 255, act)


def test_pgd_step_layouts(small_tiles):
    shape = (4, 3, 8, 8)
    g = torch.randn(shape, generator=gen(9)).to(DEV)
    delta, x = attack_inputs(shape, torch.bfloat16)
    cl = torch.channels_last
    active = torch.tensor([True, False, True, True], device=DEV)
    batch_inner = delta.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    for d, gg, xx in [(delta.to(memory_format=cl), g.to(memory_format=cl), x.to(memory_format=cl)),
                      (delta, g.to(memory_format=cl).half(), x), (batch_inner, g, x)]:
        out = check("pgd_step", d, gg, xx, 8 / 255, 2 / 255, active)
        assert out.stride() == torch.empty_like(d).stride()


@pytest.mark.parametrize("starts", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_multigrad_step_parity(starts, dtype):
    for rows, cols in [(1, 1), (7, 3), (7, 784)]:
        grads = torch.stack([grad_rows(rows, cols, seed=10 + s) for s in range(starts)]).to(dtype)
        grads[0, :, ::5] = grads[-1, :, ::5].abs()  # agreements and disagreements
        x = rand((rows, cols), seed=11, dtype=dtype)
        for th in {None, 1, starts - 1 or 1, starts}:
            check("multigrad_step", grads, x, 8 / 255, 16 / 255, th)


def test_multigrad_step_layouts():
    shape = (4, 3, 5, 5)
    x = rand(shape, seed=12).to(memory_format=torch.channels_last)
    g = torch.randn((3,) + shape, generator=gen(13)).to(DEV)
    for grads in (g, g[:1].expand(3, *shape), g.transpose(0, 1).contiguous().transpose(0, 1)):
        out = check("multigrad_step", grads, x, 8 / 255, 16 / 255, 2)
        assert out.stride() == x.stride()


# ------------------------------------------------------------------------------------------------------ ATAS


def atas_case(rows=3, chans=3, size=(5, 4), pad=2, n_buf=6, dtype=torch.float32, buf_dtype=torch.float32, seed=20):
    h, w = size
    buf = rand((n_buf, chans, h + 2 * pad, w + 2 * pad), -0.05, 0.05, seed, buf_dtype)  # poison outside the windows
    index = torch.randperm(n_buf, generator=gen(seed))[:rows].to(DEV)
    offsets = torch.randint(0, 2 * pad + 1, (rows, 2), generator=gen(seed + 1)).to(DEV)
    flips = (torch.arange(rows) % 2 == 0).to(DEV)
    x = rand((rows, chans, h, w), seed=seed + 2, dtype=dtype)
    x_adv = (x.float() + rand(x.shape, -0.03, 0.03, seed + 3)).clamp(0, 1).to(dtype)
    grad = grad_rows(rows, chans * h * w, seed + 4).view(rows, chans, h, w)
    grad[0] = torch.randn(grad[0].shape, generator=gen(seed + 5)).to(DEV)  # one finite row whatever the kinds
    v = rand(n_buf, 0, 2, seed + 6)
    return buf, v, index, offsets, flips, grad, x_adv, x


def check_atas_step(case, warmup: bool) -> None:
    buf, v, index, offsets, flips, grad, x_adv, x = case
    b1, v1, b2, v2 = buf.clone(), v.clone(), buf.clone(), v.clone()
    with poisoned_allocations():
        out = op("atas_step")(b1, v1, index, offsets, flips, grad, x_adv, x, warmup=warmup, **ATAS_KW)
    expected = R.atas_step(b2, v2, index, offsets, flips, grad, x_adv, x, warmup=warmup, **ATAS_KW)
    assert_same(v1, v2)  # v involves no sqrt/division: exact on every device
    if EXACT_STEP or warmup:
        assert_same(out, expected)
        assert_same(b1, b2)
    else:
        tol = {torch.float32: 1e-6, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}
        torch.testing.assert_close(out, expected, rtol=0, atol=tol[out.dtype], equal_nan=True)
        torch.testing.assert_close(b1, b2, rtol=0, atol=tol[b1.dtype], equal_nan=True)
    assert out.stride() == torch.empty_like(x_adv).stride()


@pytest.mark.parametrize("dtype,buf_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                             (torch.float16, torch.float32)])
def test_atas_parity(dtype, buf_dtype):
    case = atas_case(dtype=dtype, buf_dtype=buf_dtype)
    buf, _, index, offsets, flips, _, _, x = case
    check("atas_gather", buf, index, offsets, flips, x)
    for warmup in (False, True):
        check_atas_step(case, warmup)


def test_atas_layouts_and_shapes(small_tiles):
    cl = torch.channels_last
    for kw in ({"rows": 1, "chans": 1, "size": (1, 1), "pad": 0, "n_buf": 1}, {"size": (8, 8), "pad": 4},
               {"rows": 2, "size": (7, 6), "pad": 1, "n_buf": 2}):
        case = atas_case(**kw)  # n = 3·8·8 = 192 > FUSE_MAX_N: partial norms, then (rows, tiles) updates
        check_atas_step(case, warmup=False)
        check_atas_step(case, warmup=True)
    buf, v, index, offsets, flips, grad, x_adv, x = atas_case(size=(6, 6))
    x, grad = x.to(memory_format=cl), grad.to(memory_format=cl)
    check("atas_gather", buf, index, offsets, flips, x)
    check_atas_step((buf, v, index, offsets, flips, grad, x_adv.to(memory_format=cl), x), warmup=False)
    strided_index = torch.stack([index, index], 1)[:, 0]
    check_atas_step((buf, v, strided_index, offsets.t().contiguous().t(), flips, grad, x_adv, x), warmup=False)


def test_atas_clamps_bad_indices_in_kernel():
    """Out-of-range index/offsets (the public wrapper rejects them on CPU) stay inside the buffer."""
    buf, v, index, offsets, flips, grad, x_adv, x = atas_case(rows=2, n_buf=4)
    bad_index = torch.tensor([-7, 99], device=DEV)
    bad_offsets = torch.tensor([[-3, 50], [9, -1]], device=DEV)
    clamped_index = bad_index.clamp(0, 3)
    clamped_offsets = bad_offsets.clamp(0, 4)
    assert_same(op("atas_gather")(buf, bad_index, bad_offsets, flips, x),
                R.atas_gather(buf, clamped_index, clamped_offsets, flips, x))
    b1, v1, b2, v2 = buf.clone(), v.clone(), buf.clone(), v.clone()
    op("atas_step")(b1, v1, bad_index, bad_offsets, flips, grad, x_adv, x, warmup=False, **ATAS_KW)
    R.atas_step(b2, v2, clamped_index, clamped_offsets, flips, grad, x_adv, x, warmup=False, **ATAS_KW)
    assert_same(v1, v2)
    if EXACT_STEP:
        assert_same(b1, b2)


# ------------------------------------------------------------------------------------------------------ FGSM-PGI


def pgi_case(rows=3, chans=3, size=(5, 4), pad=2, n_buf=6, dtype=torch.float32, buf_dtype=torch.float32, seed=50):
    """(delta_buf, mom_buf, index, offsets, flips, grad, grad_l1, x_adv, x): ATAS's windows, plus a momentum of the
    size of g/‖g‖₁ so that both terms of m decide its sign. ‖g‖₁ is finite (test_pgi_parity adds NaN and zero)."""
    buf, _, index, offsets, flips, grad, x_adv, x = atas_case(rows, chans, size, pad, n_buf, dtype, buf_dtype, seed)
    grad[1:] = torch.where(torch.isfinite(grad[1:]), grad[1:], 0.0)
    l1 = grad.float().abs().sum()
    mom = (rand(buf.shape, -1, 1, seed + 7) * 3 / max(1, x.numel())).to(buf_dtype)
    return buf, mom, index, offsets, flips, grad, l1, x_adv, x


def check_pgi_step(case, **kw) -> None:
    kw = {**PGI_KW, **kw}
    d1, m1, d2, m2 = case[0].clone(), case[1].clone(), case[0].clone(), case[1].clone()
    with poisoned_allocations():
        out = op("pgi_step")(d1, m1, *case[2:], **kw)
    expected = R.pgi_step(d2, m2, *case[2:], **kw)
    assert_same(out, expected)  # exact on every device: the division by ‖g‖₁ is IEEE on both sides
    assert_same(d1, d2)
    assert_same(m1, m2)
    assert out.stride() == torch.empty_like(case[7]).stride()


@pytest.mark.parametrize("dtype,buf_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                             (torch.float16, torch.float32), (torch.float32, torch.float16)])
def test_pgi_parity(dtype, buf_dtype):
    case = pgi_case(dtype=dtype, buf_dtype=buf_dtype)
    for decay in (0.0, 0.3, 1.0):
        check_pgi_step(case, decay=decay)
    grad = case[5].clone()
    grad[0, 0, 0, 0] = float("nan")  # ‖g‖₁ = NaN: every momentum window NaN, the prior only re-projected
    check_pgi_step(case[:5] + (grad, grad.abs().sum()) + case[7:])
    zero = torch.zeros_like(grad)  # ‖g‖₁ = 0: 0/0
    check_pgi_step(case[:5] + (zero, zero.abs().sum()) + case[7:])


def test_pgi_layouts_and_shapes(small_tiles):
    cl = torch.channels_last
    for kw in ({"rows": 1, "chans": 1, "size": (1, 1), "pad": 0, "n_buf": 1}, {"size": (8, 8), "pad": 4},
               {"rows": 2, "size": (7, 6), "pad": 1, "n_buf": 2}):
        check_pgi_step(pgi_case(**kw))  # 3·8·8 = 192 > TILE_BLOCK: two tiles per row
    buf, mom, index, offsets, flips, grad, l1, x_adv, x = pgi_case(size=(6, 6))
    check_pgi_step((buf, mom, index, offsets, flips, grad.to(memory_format=cl), l1, x_adv.to(memory_format=cl),
                    x.to(memory_format=cl)))
    strided_index = torch.stack([index, index], 1)[:, 0]
    check_pgi_step((buf, mom, strided_index, offsets.t().contiguous().t(), flips, grad.bfloat16(), l1.half(), x_adv,
                    x))


def test_pgi_clamps_bad_indices_in_kernel():
    """Out-of-range index/offsets (the public wrapper rejects them on CPU) stay inside the buffers."""
    buf, mom, index, offsets, flips, grad, l1, x_adv, x = pgi_case(rows=2, n_buf=4)
    bad = (torch.tensor([-7, 99], device=DEV), torch.tensor([[-3, 50], [9, -1]], device=DEV))
    d1, m1, d2, m2 = buf.clone(), mom.clone(), buf.clone(), mom.clone()
    out = op("pgi_step")(d1, m1, *bad, flips, grad, l1, x_adv, x, **PGI_KW)
    want = R.pgi_step(d2, m2, bad[0].clamp(0, 3), bad[1].clamp(0, 4), flips, grad, l1, x_adv, x, **PGI_KW)
    assert_same(out, want)
    assert_same(d1, d2)
    assert_same(m1, m2)


# ------------------------------------------------------------------------------------------------------ registration


def sample_args(name: str) -> tuple[tuple, dict]:
    delta, x = attack_inputs((2, 3, 4, 4))
    g = torch.randn((2, 3, 4, 4), generator=gen(30)).to(DEV)
    if name == "zerograd_step":
        return (delta, g, x, 8 / 255, 16 / 255, 0.35), {}
    if name == "pgd_step":
        return (delta, g, x, 8 / 255, 2 / 255, torch.tensor([True, False], device=DEV)), {}
    if name == "multigrad_step":
        return (torch.stack([g, -g.abs(), g]), x, 8 / 255, 16 / 255, 2), {}
    if name == "pgi_step":
        return pgi_case(rows=2, size=(4, 4), pad=1, n_buf=3), dict(PGI_KW)
    buf, v, index, offsets, flips, grad, x_adv, x = atas_case(rows=2, size=(4, 4), pad=1, n_buf=3)
    if name == "atas_gather":
        return (buf, index, offsets, flips, x), {}
    return (buf, v, index, offsets, flips, grad, x_adv, x), dict(warmup=False, **ATAS_KW)


@pytest.mark.parametrize("name", OPS)
def test_opcheck(name):
    args, kwargs = sample_args(name)
    torch.library.opcheck(op(name), args, kwargs)


@pytest.mark.parametrize("name", OPS)
def test_schema_matches_fastat(name):
    fastat.ops.SCHEMAS  # noqa: B018  (importing fastat.ops defines fastat::<op>)
    ours = str(getattr(torch.ops.fastat_triton, name).default._schema)
    theirs = str(getattr(torch.ops.fastat, name).default._schema)
    assert ours == theirs.replace("fastat::", "fastat_triton::", 1)


@pytest.mark.parametrize("name", OPS)
def test_compiled_public_op_equals_eager(name):
    args, kwargs = sample_args(name)
    public = getattr(fastat.ops, name)
    mutated = (0, 1) if name in ("atas_step", "pgi_step") else ()

    def call(*a):
        return public(*a, **kwargs)

    with fastat.ops.use_backend("triton"):
        eager_args = [a.clone() if i in mutated else a for i, a in enumerate(args)]
        compiled_args = [a.clone() if i in mutated else a for i, a in enumerate(args)]
        eager = call(*eager_args)
        torch._dynamo.reset()
        compiled = torch.compile(call, fullgraph=True, backend="aot_eager")(*compiled_args)
    assert_same(compiled, eager)
    for i in mutated:
        assert_same(compiled_args[i], eager_args[i])
    with fastat.ops.use_backend("torch"):
        reference = call(*[a.clone() if i in mutated else a for i, a in enumerate(args)])
    if EXACT_STEP or name != "atas_step":
        assert_same(eager, reference)


@pytest.mark.slow
@pytest.mark.skipif(not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists(),
                    reason="triton's bundled ptxas is missing")
def test_kernels_compile_for_sm90():
    """The launches the launchers make at real sizes (MNIST/CIFAR/ImageNet, 70000 rows, every dtype, layout, plan and
    autotune config; a covering subset of them) compile for an H100 with the specialisation a GPU launch gets, fit the
    grid limits, disable contraction, and their PTX has no extra FMA, NaN-dropping min/max, subnormal flushing or
    approximate sqrt/division (fastat_kernels._compile_check; needs no GPU, but must run without the interpreter)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "fastat_kernels._compile_check", "--arch", "90"], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]


# ------------------------------------------------------------------------------------------------------ GPU sizes


@cuda_only
@pytest.mark.cuda
@pytest.mark.parametrize("q", [0.35, 0.7])
def test_full_size_rows_on_gpu(q):
    """ImageNet rows (150528) take the split paths; CIFAR batches (512 × 3072) the fused ones; τ on many rows."""
    for rows, shape in [(4, (3, 224, 224)), (512, (3, 32, 32))]:
        n = math.prod(shape)
        g = grad_rows(rows, n, seed=40).view(rows, *shape)
        delta, x = attack_inputs((rows, *shape))
        check("zerograd_step", delta, g, x, 8 / 255, 16 / 255, q)
        check("pgd_step", delta, g, x, 8 / 255, 2 / 255)
        case = atas_case(rows=min(rows, 64), chans=3, size=shape[1:], pad=4, n_buf=rows + 3)
        check_atas_step(case, warmup=False)
    g = torch.randn(4096, 3072, device=DEV) * 10.0 ** torch.randint(-4, 5, (4096, 1), device=DEV)
    k_lo, coef, use_hi, need_hi = zg._plan(3072, q)
    tau = torch.empty(4096, device=DEV)
    zg._zerograd_tau_kernel[(4096,)](g, tau, k_lo, coef, 3072, use_hi, need_hi, False, BLOCK=4096, num_warps=8,
                                     enable_fp_fusion=False)
    assert torch.equal(tau.view(torch.int32), torch.quantile(g.abs(), q, dim=1).view(torch.int32))
