"""Edge cases of the CUDA kernels' launch code (csrc/cuda/*.cu, bindings.cpp), exact against fastat.ops.reference:

* operands at storage offsets: misaligned for the 8/16-byte vector paths (all of them, or only one), or aligned but
  offset; the vector path must only be taken when every pointer allows it;
* more than 65535 rows (the gridDim.y/z limit), with tiny rows so it stays cheap; an empty batch; images of no
  elements;
* launches on the caller's current stream (inputs that only become valid after a sleep queued on that stream) and on
  the tensors' device when another one is current (needs 2 GPUs; per-device launch caches, default generator);
* mixed layouts (channels_last / contiguous / strided) and fp16/bf16 state;
* CUDA-graph capture on every atas_step path (the split path allocates scratch inside the capture), and uniform_init
  replays drawing exactly what eager draws from the same generator state.
"""

from __future__ import annotations

import pytest
import torch

from fastat.ops import reference
from fastat.ops._specs import (EPS, sample_atas_gather, sample_atas_step, sample_multigrad_step, sample_pgd_step,
                               sample_zerograd_step)

from ._dryrun import DEV, needs_gpu, synchronize, too_slow_to_emulate
from .test_cuda_ops import _cuda_kernels_built, atas_path  # noqa: F401  (fixtures used here)
from .test_cuda_ops import (F, SMALL_CASES, _capture, _gen, _pick, _run_atas_step, _small_case, assert_exact,
                            check_capture_replays_eager)

pytestmark = pytest.mark.cuda

SLEEP_CYCLES = 50_000_000  # ~25 ms of GPU time queued ahead of the inputs
HALF_PAIRS = [(torch.float32, torch.float32), (torch.bfloat16, torch.float16), (torch.float16, torch.bfloat16)]
SATURATED = {"gamma_over_c": 1e3}  # atas_step's step clamps to step_max: every output is exact


def _at_offset(t: torch.Tensor, offset: int) -> torch.Tensor:
    """t's values, contiguous, starting `offset` elements into a larger allocation."""
    flat = torch.empty(t.numel() + offset, dtype=t.dtype, device=t.device)
    out = flat[offset:].view(t.shape)
    out.copy_(t)
    return out


def _atas_step_both(args: tuple, kwargs: dict) -> None:
    got = _run_atas_step(args, kwargs, F.atas_step)
    want = _run_atas_step(args, kwargs, reference.atas_step)
    for k, (a, b) in enumerate(zip(got, want)):
        assert_exact(a, b, f"atas_step output {k}")


# ------------------------------------------------------------------------------------------------ storage offsets


@pytest.mark.parametrize("dtype,grad_dtype", _pick(HALF_PAIRS, HALF_PAIRS[:2]))
@pytest.mark.parametrize("shifted", _pick(["all", "grad", "x"], ["all", "grad"]))
@pytest.mark.parametrize("offset", _pick([1, 2, 4], [1, 4]))  # 4: vector-aligned, but not at the allocation's start
def test_operands_at_storage_offsets(offset, shifted, dtype, grad_dtype):
    rows, cols = 6, 3072
    gen = _gen(rows, cols)

    def place(t, role):
        return _at_offset(t, offset) if shifted in ("all", role) else t.contiguous()

    x0 = torch.rand(rows, 3, 32, 32, generator=gen, device=DEV).to(dtype)
    x = place(x0, "x")
    d = place(((torch.rand(x.shape, generator=gen, device=DEV) * 2 - 1) * 1.5 * EPS).to(dtype), "all")
    g = place(torch.randn(x.shape, generator=gen, device=DEV).to(grad_dtype), "grad")
    grads = place(torch.randn((3,) + x.shape, generator=gen, device=DEV).to(grad_dtype), "grad")
    active = place(torch.tensor([True, False, True, True, False, True], device=DEV), "all")
    assert_exact(F.pgd_step(d, g, x, EPS, EPS / 4, active), reference.pgd_step(d, g, x, EPS, EPS / 4, active), "pgd")
    assert_exact(F.pgd_step(d, g, x, EPS, EPS / 4), reference.pgd_step(d, g, x, EPS, EPS / 4), "pgd all rows")
    assert_exact(F.multigrad_step(grads, x, EPS, 2 * EPS, 2), reference.multigrad_step(grads, x, EPS, 2 * EPS, 2),
                 "multigrad")
    assert_exact(F.zerograd_step(d, g, x, EPS, 2 * EPS, 0.35), reference.zerograd_step(d, g, x, EPS, 2 * EPS, 0.35),
                 "zerograd")

    s = sample_atas_step(rows, cols, "random", gen, DEV)
    buf, v_buf, index, offsets, flips, ag, x_adv, ax = s.args
    args = (place(buf.to(dtype), "all"), place(v_buf, "all"), place(index, "all"), place(offsets, "all"),
            place(flips, "all"), place(ag.to(grad_dtype), "grad"), place(x_adv.to(dtype), "x"),
            place(ax.to(dtype), "x"))
    assert_exact(F.atas_gather(args[0], *args[2:5], args[7]), reference.atas_gather(args[0], *args[2:5], args[7]),
                 "atas_gather")
    _atas_step_both(args, dict(s.kwargs, **SATURATED))

    u = F.uniform_init(x, EPS, generator=torch.Generator(DEV).manual_seed(7))
    assert_exact(u, F.uniform_init(x0.contiguous(), EPS, generator=torch.Generator(DEV).manual_seed(7)), "uniform")


# ------------------------------------------------------------------------------------------- more than 65535 rows

ROWS = 70_000  # more rows than a gridDim.y/z could hold


@too_slow_to_emulate
def test_more_rows_than_a_grid_y_dimension(poisoned_allocations):
    gen = _gen(ROWS, 3)
    s = sample_zerograd_step(ROWS, 3, "random", gen, DEV)
    for q in (0.35, 1.0):
        args = s.args[:5] + (q,)
        assert_exact(F.zerograd_step(*args), reference.zerograd_step(*args), f"zerograd q={q}")
    s = sample_pgd_step(ROWS, 3, "random", gen, DEV, active=True)
    assert_exact(F.pgd_step(*s.args), reference.pgd_step(*s.args), "pgd")
    s = sample_multigrad_step(ROWS, 3, "random", gen, DEV, starts=2)
    assert_exact(F.multigrad_step(*s.args), reference.multigrad_step(*s.args), "multigrad")
    s = sample_atas_gather(ROWS, 3, "random", gen, DEV)
    assert_exact(F.atas_gather(*s.args), reference.atas_gather(*s.args), "atas_gather")
    x = s.args[4]
    u = F.uniform_init(x, EPS, generator=torch.Generator(DEV).manual_seed(3)).float()
    assert u.abs().max() <= EPS and (x + u).min() >= 0 and (x + u).max() <= 1
    assert (u[-1000:] != 0).any() and (u[-1000:] != u[:1000]).any()  # the last rows are drawn too


@too_slow_to_emulate
@pytest.mark.usefixtures("atas_path")
@pytest.mark.parametrize("warmup", [False, True])
def test_atas_step_more_rows_than_a_grid_y_dimension(warmup, poisoned_allocations):
    s = sample_atas_step(ROWS, 3, "random", _gen(ROWS, 3), DEV, warmup=warmup)
    _atas_step_both(s.args, dict(s.kwargs, **SATURATED))


def test_an_empty_batch():
    """No rows: an empty result, and no error (a launch of zero blocks would be an invalid configuration)."""
    z = torch.zeros(0, 5, device=DEV)
    for out in (F.zerograd_step(z, z, z, EPS, 2 * EPS, 0.5), F.pgd_step(z, z, z, EPS, EPS / 4)):
        assert out.shape == (0, 5) and out.dtype == z.dtype and out.device == z.device
    synchronize()  # a failed launch would surface here


@pytest.mark.usefixtures("atas_path")
@pytest.mark.parametrize("shape", [(3, 0, 4, 4), (3, 2, 0, 4), (3, 2, 4, 0)])
def test_atas_ops_on_images_of_no_elements(shape):
    """C, H or W = 0: nothing is gathered or written, but atas_step still updates v (‖g‖² = 0), as the reference does
    (the CUDA launchers once refused such shapes; every path, split included, must take them)."""
    b, c, h, w = shape
    gen = _gen(b, c * 100 + h * 10 + w)
    x = torch.rand(shape, generator=gen, device=DEV)
    buf = torch.randn(5, c, h + 2, w + 2, generator=gen, device=DEV)
    v_buf = torch.rand(5, generator=gen, device=DEV)
    index = torch.tensor([0, 2, 4], device=DEV)
    offsets = torch.tensor([[0, 1], [2, 2], [1, 0]], device=DEV)
    flips = torch.tensor([True, False, True], device=DEV)
    assert_exact(F.atas_gather(buf, index, offsets, flips, x), reference.atas_gather(buf, index, offsets, flips, x))
    for warmup in (False, True):
        kwargs = dict(eps=EPS, c=0.01, beta=0.5, gamma_over_c=2 * EPS, step_min=EPS / 8, step_max=EPS, warmup=warmup)
        _atas_step_both((buf, v_buf, index, offsets, flips, torch.randn_like(x), x, x), kwargs)


# ----------------------------------------------------------------------------------------------- streams, devices


def _staged(args: tuple) -> list:
    """NaN-filled stand-ins for the floating-point tensors of args (the others are copied as they are)."""
    return [torch.full_like(a, float("nan")) if isinstance(a, torch.Tensor) and a.is_floating_point()
            else a.clone() if isinstance(a, torch.Tensor) else a for a in args]


def _fill_after_sleep(staged: list, args: tuple) -> None:
    """On the current stream: sleep, then copy the real inputs in. A kernel on another stream sees NaN."""
    torch.cuda._sleep(SLEEP_CYCLES)
    for dst, src in zip(staged, args):
        if isinstance(dst, torch.Tensor) and dst.is_floating_point():
            dst.copy_(src)


def _call(name: str, args, kwargs: dict) -> tuple:
    kw = dict(kwargs)
    if "generator" in kw:
        kw["generator"] = torch.Generator(args[0].device).manual_seed(1)
    out = getattr(F, name)(*args, **kw)
    return (out, args[0], args[1]) if name == "atas_step" else (out,)


def _expected(name: str, args, kwargs: dict) -> tuple:
    got = _call(name, tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args), kwargs)
    torch.cuda.synchronize()
    return got


@needs_gpu
@pytest.mark.parametrize("case", SMALL_CASES)
def test_kernels_run_on_the_current_stream(case):
    name, args, kwargs = _small_case(case)
    want = _expected(name, args, kwargs)
    staged = _staged(args)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _fill_after_sleep(staged, args)
        got = _call(name, staged, kwargs)
    side.synchronize()
    for k, (a, b) in enumerate(zip(got, want)):
        assert_exact(a, b, f"{case} output {k}")


def _two_gpus() -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")


@needs_gpu
@pytest.mark.parametrize("case", SMALL_CASES)
def test_tensors_on_a_non_current_device(case):
    """Tensors on cuda:1 while cuda:0 is current: the op runs on cuda:1, on cuda:1's current stream."""
    _two_gpus()
    with torch.cuda.device(1):
        name, args, kwargs = _small_case(case)
        want = _expected(name, args, kwargs)
        staged = _staged(args)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
    assert args[0].device == torch.device("cuda", 1)
    with torch.cuda.stream(side):  # cuda:1 current, its current stream is `side`
        _fill_after_sleep(staged, args)
        with torch.cuda.device(0):  # cuda:0 current; cuda:1's current stream stays `side`
            got = _call(name, staged, kwargs)
    side.synchronize()
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.device == b.device
        assert_exact(a, b, f"{case} output {k}")


@needs_gpu
def test_uniform_init_uses_the_default_generator_of_the_tensors_device():
    _two_gpus()
    x = torch.rand(4, 3, 8, 8, device="cuda:1")  # initializes CUDA, and with it default_generators
    gens = torch.cuda.default_generators
    before = [g.get_offset() for g in gens[:2]]
    with torch.cuda.device(0):
        F.uniform_init(x, EPS)
    after = [g.get_offset() for g in gens[:2]]
    assert after[0] == before[0] and after[1] > before[1]


# ------------------------------------------------------------------------------------------ layouts, half state


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixed_layouts_and_half_state(dtype):
    """Operands in different layouts (channels_last, contiguous, strided) and fp16/bf16 state; odd row length."""
    rows, shape = 5, (3, 9, 7)
    gen = _gen(rows, 189)
    cl = torch.channels_last
    x = torch.rand((rows,) + shape, generator=gen, device=DEV).to(dtype)
    d = ((torch.rand(x.shape, generator=gen, device=DEV) * 2 - 1) * 1.5 * EPS).to(dtype).contiguous(memory_format=cl)
    g = torch.randn(rows, shape[0], shape[2], shape[1], generator=gen, device=DEV).transpose(2, 3)  # strided fp32
    out = F.pgd_step(d, g, x, EPS, EPS / 4)
    assert_exact(out, reference.pgd_step(d, g, x, EPS, EPS / 4), "pgd")
    assert out.stride() == torch.empty_like(d).stride()
    out = F.zerograd_step(d, g, x, EPS, 2 * EPS, 0.7)
    assert_exact(out, reference.zerograd_step(d, g, x, EPS, 2 * EPS, 0.7), "zerograd")
    assert out.stride() == torch.empty_like(d).stride()
    grads = torch.randn((3,) + x.shape, generator=gen, device=DEV).to(torch.bfloat16)  # contiguous, x channels_last
    xcl = x.contiguous(memory_format=cl)
    out = F.multigrad_step(grads, xcl, EPS, 2 * EPS)
    assert_exact(out, reference.multigrad_step(grads, xcl, EPS, 2 * EPS), "multigrad")
    assert out.stride() == torch.empty_like(xcl).stride()

    s = sample_atas_step(rows, 3072, "random", gen, DEV)  # (3, 32, 32) images
    buf, v_buf, index, offsets, flips, ag, x_adv, ax = s.args
    args = (buf.to(torch.float16 if dtype == torch.bfloat16 else torch.bfloat16), v_buf, index, offsets, flips,
            ag.transpose(2, 3).contiguous().transpose(2, 3), x_adv.to(dtype).contiguous(memory_format=cl), ax.to(dtype))
    assert_exact(F.atas_gather(args[0], *args[2:5], args[6]), reference.atas_gather(args[0], *args[2:5], args[6]))
    _atas_step_both(args, dict(s.kwargs, **SATURATED))
    u = F.uniform_init(xcl, EPS, generator=torch.Generator(DEV).manual_seed(5))
    assert u.is_contiguous()
    assert_exact(u, F.uniform_init(x, EPS, generator=torch.Generator(DEV).manual_seed(5)))  # by logical index


# ------------------------------------------------------------------------------------------------ CUDA graphs


@needs_gpu
@pytest.mark.parametrize("rows,cols", [(4, 784), (2, 20000)])  # one block per row; 8-block clusters (H100)
@pytest.mark.parametrize("warmup", [False, True])
@pytest.mark.usefixtures("atas_path")
def test_atas_step_captures_on_every_path(warmup, rows, cols):
    s = sample_atas_step(rows, cols, "random", _gen(rows, cols), DEV, warmup=warmup)
    check_capture_replays_eager("atas_step", s.args, s.kwargs)


@needs_gpu
def test_uniform_init_replay_draws_what_eager_draws_from_the_same_state():
    """torch's graph-safe RNG: a replay reads the generator's seed and offset at replay time."""
    x = torch.rand(8, 3, 32, 32, device=DEV)
    result = torch.empty_like(x)
    graph = _capture(lambda: result.copy_(F.uniform_init(x, EPS)))
    torch.cuda.manual_seed(11)
    eager = F.uniform_init(x, EPS)
    torch.cuda.manual_seed(11)
    result.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert_exact(result, eager)
