"""Tests specific to the CUDA kernels (`torch.ops.fastat.<op>` on CUDA tensors, csrc/cuda/*.cu + bindings.cpp).

Exact parity with fastat.ops.reference on the GPU at the shapes that select each launch path (zerograd: one block per
row up to 16384 elements, a thread-block cluster up to 8·40960, a streaming block beyond; pgd/multigrad: 4-wide vector
accesses vs the scalar fallback for odd rows; ATAS: several norm chunks per row), out-of-range
index/offsets (clamped, never a crash), uniform_init's generator protocol, opcheck, CUDA-graph capture and determinism.
Storage offsets, >65535 rows, other devices and streams, mixed layouts and per-path graph capture are in
test_cuda_edge_cases.py; the OpSpec sample table and the benchmark sizes in test_cuda_sample_table.py, the cases it
misses in test_cuda_{zerograd,atas,random}_cases.py, uniform_init's Philox stream in test_cuda_philox.py, the launch
paths an emulated device is configured to take in test_emulated_launch_paths.py; the generic small-shape sweep over
all backends is tests/ops/test_parity.py.

FASTAT_CUDA_TEST_SHAPES=sanitizer shrinks the shape sets (for compute-sanitizer runs, see bench/gpu_check.sh, and for
the emulator). FASTAT_CUDA_TESTS_ON_CPU=emu runs these tests on the CUDA kernels under the CPU emulator, without the
GPU-only ones (see _dryrun.py).
"""

from __future__ import annotations

import os

import pytest
import torch

from fastat.ops import _native, reference
from fastat.ops._schemas import SCHEMAS
from fastat.ops._specs import (EPS, VARIANTS, sample_atas_gather, sample_atas_step, sample_multigrad_step,
                               sample_pgd_step, sample_zerograd_step)

from ._dryrun import DEV, EMULATED, manual_seed, needs_gpu, ops_under_test, synchronize

pytestmark = pytest.mark.cuda

F = ops_under_test()
SMALL = os.environ.get("FASTAT_CUDA_TEST_SHAPES", "full").strip().lower() == "sanitizer"


def _pick(full, small):
    return small if SMALL else full


# (rows, cols) per op; the comments name the launch path a shape exercises. The sanitizer sets keep one case per path.
ZG_SHAPES = _pick([(1, 1), (3, 3), (7, 784), (128, 3072), (512, 3072),  # one block per row, row in shared memory
                   (2, 12288),  # 48 KB + static shared memory: needs the dynamic-smem opt-in
                   (2, 16384), (2, 16385), (3, 40000), (64, 150528),  # boundary, then 2-, 3- and 8-block clusters
                   (2, 327680), (2, 327681)],  # largest cluster slice (160 KB), then the streaming block
                  [(3, 3), (4, 3072), (2, 16385), (1, 327681)])
ELEM_SHAPES = _pick([(1, 1), (7, 784), (5, 1001), (512, 3072), (64, 150528)],  # n % 4 != 0: scalar path
                    [(7, 784), (5, 1001)])
ATAS_SHAPES = _pick([(1, 3), (7, 784), (2, 4900), (512, 3072), (64, 150528)],  # fused: 1 block, then 4-, 3- and
                    [(1, 3), (4, 3072)])                                       # 8-block clusters per row (H100)
ATAS_PATHS = ("auto", "fused", "split")
ZG_VARIANTS = _pick(VARIANTS, ("random", "nan", "grad_bf16", "channels_last"))
ELEM_VARIANTS = _pick(VARIANTS, ("random", "all_bf16"))
Q_VALUES = _pick((0.0, 0.35, 0.7, 1.0), (0.35, 1.0))
STARTS = _pick((1, 3, 5), (3,))


@pytest.fixture(scope="module", autouse=True)
def _cuda_kernels_built():
    """On a GPU machine a missing CUDA build is a failure, not a skip: these tests exist to check it."""
    if not EMULATED and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if EMULATED:
        missing = [op for op in SCHEMAS if not getattr(F, op).default.has_kernel_for_dispatch_key("CPU")]
        assert not missing, f"the emulated binding registered no kernel for {missing}"
        return
    assert _native.load_error() is None, f"fastat._C failed to load: {_native.load_error()}"
    missing = [op for op in SCHEMAS if not _native.has_kernel(op, DEV)]
    assert not missing, f"fastat._C has no {DEV} kernel for {missing}: rebuild with a CUDA torch and nvcc"


def _gen(rows: int, cols: int) -> torch.Generator:
    return torch.Generator(DEV).manual_seed(rows * 7919 + cols)


def assert_exact(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, f"{what}: {got.dtype}{tuple(got.shape)}"
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


def assert_close_atas(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    """ATAS outputs: the step's sqrt/divide may differ by a few ulp from torch's (a * (1/c) on CUDA)."""
    atol = 2.5e-7 if got.dtype == torch.float32 else torch.finfo(got.dtype).eps
    torch.testing.assert_close(got, want, rtol=0, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


@pytest.fixture(params=ATAS_PATHS)
def atas_path(request, monkeypatch):
    """atas_step's launch path (csrc/cuda/atas.cu): auto, the one-launch fused kernel, or the two-launch split one."""
    if request.param == "auto":
        monkeypatch.delenv("FASTAT_CUDA_ATAS_PATH", raising=False)
    else:
        monkeypatch.setenv("FASTAT_CUDA_ATAS_PATH", request.param)
    return request.param


def _run_atas_step(args, kwargs, fn):
    args = tuple(a.clone() if i < 2 else a for i, a in enumerate(args))  # delta_buf, v_buf are written
    return fn(*args, **kwargs), args[0], args[1]


# ------------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("variant", ZG_VARIANTS)
@pytest.mark.parametrize("rows,cols", ZG_SHAPES)
def test_zerograd_step_matches_reference(rows, cols, variant, poisoned_allocations):
    for q in Q_VALUES:
        s = sample_zerograd_step(rows, cols, variant, _gen(rows, cols), DEV, q=q)
        out = F.zerograd_step(*s.args)
        assert_exact(out, reference.zerograd_step(*s.args), f"rows={rows} cols={cols} {variant} q={q}")
        assert out.stride() == torch.empty_like(s.args[0]).stride()


@pytest.mark.parametrize("cols", _pick([3072, 20000, 150528, 400000], [3072, 20000]))
def test_zerograd_step_special_rows(cols):
    """Ties galore, constant, all-zero, ±inf and single-spike rows, at fractional and boundary quantiles."""
    gen = _gen(6, cols)
    g = torch.randn(6, cols, generator=gen, device=DEV)
    g[0] = torch.randint(-2, 3, (cols,), generator=gen, device=DEV).float() * 0.5
    g[1] = 0.25
    g[2] = 0.0
    g[3, : cols // 3] = float("inf")
    g[3, -2:] = -float("inf")
    g[4] = 0.0
    g[4, cols // 2] = -3.0
    g[5] *= 1e-39  # subnormal magnitudes
    x = torch.rand(6, cols, generator=gen, device=DEV)
    d = (torch.rand(6, cols, generator=gen, device=DEV) * 2 - 1) * 1.5 * EPS
    for q in (0.0, 1e-3, 0.35, 0.5, 0.7, 0.999, 1.0, *torch.rand(3, generator=gen, device=DEV).tolist()):
        assert_exact(F.zerograd_step(d, g, x, EPS, 2 * EPS, q), reference.zerograd_step(d, g, x, EPS, 2 * EPS, q),
                     f"cols={cols} q={q}")


@pytest.mark.parametrize("starts", STARTS)
@pytest.mark.parametrize("variant", ELEM_VARIANTS)
@pytest.mark.parametrize("rows,cols", ELEM_SHAPES)
def test_multigrad_step_matches_reference(rows, cols, variant, starts, poisoned_allocations):
    for threshold in sorted({None, 1, (starts + 1) // 2, starts}, key=lambda t: -1 if t is None else t):
        s = sample_multigrad_step(rows, cols, variant, _gen(rows, cols), DEV, starts=starts, threshold=threshold)
        out = F.multigrad_step(*s.args)
        assert_exact(out, reference.multigrad_step(*s.args), f"rows={rows} cols={cols} {variant} th={threshold}")
        assert out.stride() == torch.empty_like(s.args[1]).stride()


@pytest.mark.parametrize("variant", ELEM_VARIANTS)
@pytest.mark.parametrize("rows,cols", ELEM_SHAPES)
def test_pgd_step_matches_reference(rows, cols, variant, poisoned_allocations):
    for active in (True, False):
        s = sample_pgd_step(rows, cols, variant, _gen(rows, cols), DEV, active=active)
        out = F.pgd_step(*s.args)
        assert_exact(out, reference.pgd_step(*s.args), f"rows={rows} cols={cols} {variant} active={active}")
        assert out.stride() == torch.empty_like(s.args[0]).stride()


@pytest.mark.parametrize("variant", ELEM_VARIANTS)
@pytest.mark.parametrize("rows,cols", ATAS_SHAPES)
def test_atas_gather_matches_reference(rows, cols, variant, poisoned_allocations):
    s = sample_atas_gather(rows, cols, variant, _gen(rows, cols), DEV)
    out = F.atas_gather(*s.args)
    assert_exact(out, reference.atas_gather(*s.args), f"rows={rows} cols={cols} {variant}")
    assert out.stride() == torch.empty_like(s.args[4]).stride()


@pytest.mark.parametrize("warmup", [False, True])
@pytest.mark.parametrize("variant", ELEM_VARIANTS)
@pytest.mark.parametrize("rows,cols", ATAS_SHAPES)
def test_atas_step_matches_reference(rows, cols, variant, warmup, atas_path, poisoned_allocations):
    s = sample_atas_step(rows, cols, variant, _gen(rows, cols), DEV, warmup=warmup)
    got = _run_atas_step(s.args, s.kwargs, F.atas_step)
    want = _run_atas_step(s.args, s.kwargs, reference.atas_step)
    what = f"rows={rows} cols={cols} {variant} warmup={warmup} path={atas_path}"
    assert_exact(got[2], want[2], what + " v_buf")  # fp64-accumulated norms: exact
    check = assert_exact if warmup else assert_close_atas  # warmup: step = eps, no sqrt/divide
    check(got[0], want[0], what + " x_adv'")
    check(got[1], want[1], what + " delta_buf")
    assert got[0].stride() == torch.empty_like(s.args[6]).stride()


@pytest.mark.parametrize("rows,cols", ATAS_SHAPES)
def test_atas_step_is_exact_when_the_step_saturates(rows, cols, atas_path):
    """With γ/c huge the step is clamped to step_max exactly, so every output must match bit for bit."""
    s = sample_atas_step(rows, cols, "random", _gen(rows, cols), DEV)
    kwargs = dict(s.kwargs, gamma_over_c=1e3)
    got = _run_atas_step(s.args, kwargs, F.atas_step)
    want = _run_atas_step(s.args, kwargs, reference.atas_step)
    for k, (a, b) in enumerate(zip(got, want)):
        assert_exact(a, b, f"output {k}")


def test_out_of_range_index_and_offsets_are_clamped_never_crash(atas_path):
    """Kernels clamp index into [0, N-1] and offsets into [0, 2p] (no host-side value checks on CUDA)."""
    rows, cols = 6, 784
    s = sample_atas_step(rows, cols, "random", _gen(rows, cols), DEV)
    buf, v_buf, _, _, flips, grad, x_adv, x = s.args
    n, pad2 = buf.shape[0], buf.shape[2] - x.shape[2]
    offsets = torch.tensor([[-1, pad2 + 1], [pad2 + 7, -5], [-(2**40), 2**40], [0, pad2], [2**62, 1], [1, -(2**62)]],
                           device=DEV)
    wild = torch.tensor([-1, n, -(2**40), 2**40, 2**62, -(2**62)], device=DEV)
    coff = offsets.clamp(0, pad2)
    assert_exact(F.atas_gather(buf, wild, offsets, flips, x),
                 reference.atas_gather(buf, wild.clamp(0, n - 1), coff, flips, x))
    index = torch.tensor([-5, n + 2, 1, 2, 3, 4], device=DEV)  # distinct after clamping: 0, n-1, 1, 2, 3, 4
    for warmup in (True, False):
        kwargs = dict(s.kwargs, warmup=warmup, gamma_over_c=1e3)  # saturated step: exact
        ours = (buf.clone(), v_buf.clone(), index, offsets, flips, grad, x_adv, x)
        ref = (buf.clone(), v_buf.clone(), index.clamp(0, n - 1), coff, flips, grad, x_adv, x)
        assert_exact(F.atas_step(*ours, **kwargs), reference.atas_step(*ref, **kwargs))
        assert_exact(ours[0], ref[0])
        assert_exact(ours[1], ref[1])
    synchronize()  # a device-side fault would surface here


# ------------------------------------------------------------------------------------------------- uniform_init


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_uniform_init_reproducible_and_in_range(dtype):
    x = torch.rand(64, 3, 32, 32, device=DEV).to(dtype)
    x.view(64, -1)[:, :2] = torch.tensor([0.0, 1.0], device=DEV).to(dtype)
    a = F.uniform_init(x, EPS, generator=torch.Generator(DEV).manual_seed(7))
    b = F.uniform_init(x, EPS, generator=torch.Generator(DEV).manual_seed(7))
    c = F.uniform_init(x, EPS, generator=torch.Generator(DEV).manual_seed(8))
    assert a.dtype == dtype and a.is_contiguous() and torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator(DEV).manual_seed(7)
    first, second = F.uniform_init(x, EPS, generator=gen), F.uniform_init(x, EPS, generator=gen)
    assert torch.equal(first, a) and not torch.equal(first, second)  # the generator advances
    manual_seed(3)
    d1 = F.uniform_init(x, EPS)
    manual_seed(3)
    assert torch.equal(d1, F.uniform_init(x, EPS))  # default generator
    slack = 0.0 if dtype == torch.float32 else torch.finfo(dtype).eps  # one rounding of the result
    af, xf = a.float(), x.float()
    assert af.abs().max() <= EPS * (1 + slack)
    assert (xf + af).min() >= -slack and (xf + af).max() <= 1 + 2 * slack


def test_uniform_init_is_uniform():
    x = torch.full((1 << 22,), 0.5, device=DEV)  # box inactive: out = u exactly
    u = F.uniform_init(x, EPS, generator=torch.Generator(DEV).manual_seed(0)).double() / EPS
    n = u.numel()
    assert abs(u.mean().item()) < 5 / (3 * n) ** 0.5
    assert abs(u.var().item() - 1 / 3) < 0.01
    counts = torch.histc(u.float(), bins=16, min=-1, max=1)
    assert ((counts - n / 16).abs() / (n / 16) ** 0.5).max() < 6  # each bin within 6 sigma
    assert (u[1:] != u[:-1]).float().mean() > 0.999


# --------------------------------------------------------------------------------------- registration, graphs


SMALL_CASES = ["zerograd_step", "zerograd_step_optin", "zerograd_step_cluster", "zerograd_step_stream",
               "multigrad_step", "pgd_step", "atas_gather", "atas_step", "atas_step_warmup",
               "uniform_init"]  # uniform_init last


def _small_case(case: str) -> tuple[str, tuple, dict]:
    """(op name, args, kwargs) of a small CUDA sample; built lazily so collection never touches the GPU."""
    gen = _gen(4, len(case))
    if case == "zerograd_step":
        return case, sample_zerograd_step(4, 3072, "channels_last", gen, DEV).args, {}
    if case == "zerograd_step_optin":  # 48 KB of g in shared memory: the dynamic-smem opt-in
        return "zerograd_step", sample_zerograd_step(2, 12288, "random", gen, DEV, q=0.7).args, {}
    if case == "zerograd_step_cluster":
        return "zerograd_step", sample_zerograd_step(2, 20000, "grad_bf16", gen, DEV).args, {}
    if case == "zerograd_step_stream":  # past the largest cluster: one streaming block per row
        return "zerograd_step", sample_zerograd_step(2, 327681, "random", gen, DEV).args, {}
    if case == "multigrad_step":
        return case, sample_multigrad_step(4, 784, "random", gen, DEV, threshold=2).args, {}
    if case == "pgd_step":
        return case, sample_pgd_step(4, 784, "grad_bf16", gen, DEV).args, {}
    if case == "atas_gather":
        return case, sample_atas_gather(4, 3072, "random", gen, DEV).args, {}
    if case.startswith("atas_step"):
        s = sample_atas_step(4, 3072, "random", gen, DEV, warmup=case.endswith("warmup"))
        return "atas_step", s.args, s.kwargs
    return case, (torch.rand(4, 3, 8, 8, device=DEV), EPS), dict(generator=torch.Generator(DEV).manual_seed(0))


@pytest.mark.parametrize("case", SMALL_CASES)
def test_opcheck(case):
    name, args, kwargs = _small_case(case)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if name != "uniform_init":  # random: two calls draw different numbers
        utils += ("test_aot_dispatch_dynamic",)
    torch.library.opcheck(getattr(F, name), args, kwargs, test_utils=utils)


@pytest.mark.parametrize("case", SMALL_CASES)
def test_deterministic(case):
    name, args, kwargs = _small_case(case)

    def call():
        a = tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in args)
        kw = dict(kwargs, generator=torch.Generator(DEV).manual_seed(1)) if "generator" in kwargs else kwargs
        out = getattr(F, name)(*a, **kw)
        return (out, a[0], a[1]) if name == "atas_step" else (out,)

    for first, second in zip(call(), call()):
        assert torch.equal(first.nan_to_num(), second.nan_to_num())


def _capture(fn, warmup: int = 2) -> torch.cuda.CUDAGraph:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


@needs_gpu
def test_attack_step_captured_in_a_cuda_graph():
    """Forward, input gradient, zerograd_step and the clamp in one graph; replays equal eager, also on new inputs."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 10)).to(DEV)
    x = torch.rand(32, 3, 32, 32, device=DEV)
    y = torch.randint(0, 10, (32,), device=DEV)
    delta = (torch.rand_like(x) * 2 - 1) * EPS
    out = torch.empty_like(x)

    def step():
        d = delta.detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x + d), y)
        (g,) = torch.autograd.grad(loss, d)
        out.copy_(torch.clamp(x + F.zerograd_step(delta, g, x, EPS, 2 * EPS, 0.35), 0, 1))

    graph = _capture(step)
    for _ in range(2):
        step()
        expected = out.clone()
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_exact(out, expected)
        x.copy_(torch.rand_like(x))
        delta.copy_((torch.rand_like(x) * 2 - 1) * EPS)


def check_capture_replays_eager(name: str, args: tuple, kwargs: dict) -> None:
    """The op records into a CUDA graph (no host sync, no allocation-dependent state) and a replay equals eager."""
    mutating = name == "atas_step"
    start = [t.clone() for t in args[:2]]
    result = torch.empty_like(getattr(F, name)(*args, **kwargs))

    def call():
        if mutating:  # every run starts from the same buffers
            args[0].copy_(start[0])
            args[1].copy_(start[1])
        result.copy_(getattr(F, name)(*args, **kwargs))

    graph = _capture(call)
    call()
    expected = [result.clone()] + ([args[0].clone(), args[1].clone()] if mutating else [])
    result.fill_(float("nan"))
    if mutating:
        args[0].fill_(float("nan"))
        args[1].fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip([result] + (list(args[:2]) if mutating else []), expected):
        assert_exact(got, want)


@needs_gpu
@pytest.mark.parametrize("case", SMALL_CASES[:-1])
def test_each_op_captures_in_a_cuda_graph(case):
    check_capture_replays_eager(*_small_case(case))


@needs_gpu
def test_uniform_init_in_a_cuda_graph_draws_fresh_numbers_each_replay():
    x = torch.rand(8, 3, 32, 32, device=DEV)
    result = torch.empty_like(x)
    graph = _capture(lambda: result.copy_(F.uniform_init(x, EPS)))
    draws = []
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        draws.append(result.clone())
    assert not torch.equal(draws[0], draws[1])
    for d in draws:
        assert d.abs().max() <= EPS and (x + d).min() >= 0 and (x + d).max() <= 1
