"""fastat's CUDA kernels (csrc/cuda/*.cu, unmodified) run on the CPU emulator against fastat.ops.reference.

No GPU needed: tests/cuda_emu/emulator.py compiles the kernel sources with g++ against a CPU emulation of the CUDA
subset they use (every CUDA thread a fiber, blocks of a cluster on concurrent OS threads), see include/emu_cuda.h, and
the binding csrc/cuda/bindings.cpp on top, through which every op here is called. This checks the kernels' logic
(indexing, the radix selection, the cluster exchange, the launchers' path choices and fallbacks, vector/scalar paths,
dtype handling) and the binding's (layouts, arguments, allocation) bit for bit where the op is exact, plus what the
emulator watches: divergent barriers and warp collectives, deadlocks, shared-memory overruns, writes outside a
tensor and elements left unwritten. What it cannot check (timing, the memory model, real occupancy, streams, CUDA
graphs, nvcc's code generation such as FMA contraction) stays with tests/gpu on a GPU.
"""

from __future__ import annotations

import itertools
import struct
import zlib

import pytest
import torch

from fastat.ops import reference
from fastat.ops._specs import SPECS, VARIANTS

from . import emulator as emu

pytestmark = pytest.mark.emulated


@pytest.fixture(scope="module")
def lib(emulator_lib):
    _learn_static_shared_memory(emulator_lib)
    return emulator_lib


def _learn_static_shared_memory(lib):
    """Runs every ZeroGrad kernel whose launch decision depends on its static shared memory once, so that the
    emulator knows those sizes (it learns them from the __shared__ declarations a kernel executes) and answers
    cudaFuncGetAttributes the way a GPU would from the first decision of each test on."""
    for dt, gdt in itertools.product(_FLOATS, repeat=2):
        for n, settings in ((7, {}), (16385, {})):
            emu.configure(lib, **settings)
            z = torch.zeros(1, n)
            emu.zerograd_step(lib, z.to(dt), z.to(gdt), z.to(dt), 0.1, 0.2, 0.5)
    emu.configure(lib)
    emu.take_log(lib)


@pytest.fixture
def device(lib, request):
    """An H100-like emulated device, fresh for each test (per-device caches of the launchers start over), whose
    blocks run their threads in a shuffled order between synchronisation points (a seed per test, printed), so that
    a missing barrier shows as a wrong result."""
    seed = zlib.crc32(request.node.nodeid.encode()) % 100_000 + 1
    print(f"emulator schedule_seed={seed}")
    emu.configure(lib, schedule_seed=seed)
    emu.take_log(lib)
    yield _Device(lib, seed)
    emu.configure(lib)


class _Device:
    """The library, remembering the test's schedule seed so that emu.configure(device, ...) keeps it."""

    def __init__(self, lib, seed):
        self._lib, self.seed = lib, seed

    def __getattr__(self, name):
        return getattr(self._lib, name)


OPS = {
    "zerograd_step": emu.zerograd_step,
    "multigrad_step": emu.multigrad_step,
    "atas_gather": emu.atas_gather,
    "atas_step": emu.atas_step,
    "pgd_step": emu.pgd_step,
}


_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
_BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def assert_bits_equal(got, want, what=""):
    """Bit for bit, except that +0.0 and -0.0 count as equal and NaNs as equal whatever their payload: torch itself
    is not consistent there (torch.maximum(+0.0, -0.0) is -0.0 in its vectorised CPU loop and +0.0 in its scalar
    tail), so the reference cannot pin the sign of a zero, and kernels write the canonical NaN."""
    assert got.shape == want.shape and got.dtype == want.dtype, f"{what}: {got.shape}/{got.dtype} vs {want.shape}/" \
                                                                f"{want.dtype}"
    if not got.is_floating_point():
        assert torch.equal(got, want), what
        return
    g, w = (t.contiguous() + 0.0 for t in (got, want))  # -0.0 + 0.0 = +0.0
    gn, wn = g.isnan(), w.isnan()
    diff = (g.view(_BITS[g.dtype]) != w.view(_BITS[w.dtype])) & ~(gn & wn)
    if diff.any() or not torch.equal(gn, wn):
        i = int(diff.flatten().nonzero()[0]) if diff.any() else int((gn != wn).flatten().nonzero()[0])
        raise AssertionError(f"{what}: {int(diff.sum()) + int((gn != wn).sum())} elements differ, first at flat index "
                             f"{i}: {g.flatten()[i].item()!r} vs {w.flatten()[i].item()!r}")


def _compare(got, want, spec, what):
    for k, (g, w) in enumerate(zip(got, want)):
        exact = spec.exact or (spec.name == "atas_step" and k == 2)  # v_buf is exact (fp64-accumulated norms)
        if exact:
            assert_bits_equal(g, w, f"{what} output {k}")
        else:
            atol = spec.atol if g.dtype == torch.float32 else torch.finfo(g.dtype).eps
            torch.testing.assert_close(g, w, rtol=0, atol=atol, equal_nan=True,
                                       msg=lambda m: f"{what} output {k}: {m}")


def _clone_mutated(sample):
    """The sample's arguments, with fresh copies of the buffers the op writes in place."""
    return tuple(a.clone() if i in sample.mutated else a for i, a in enumerate(sample.args))


def _run_both(lib, op, sample):
    """(emulated kernel's outputs, reference's outputs, spec); mutated buffers are compared as outputs and the other
    inputs must come back untouched."""
    spec = SPECS[op]
    args = _clone_mutated(sample)
    want = (getattr(reference, op)(*args, **sample.kwargs),) + tuple(args[i] for i in sample.mutated)
    snapshot = [a.clone() if isinstance(a, torch.Tensor) else a for a in sample.args]
    args = _clone_mutated(sample)
    got = (OPS[op](lib, *args, **sample.kwargs),) + tuple(args[i] for i in sample.mutated)
    for i, (before, after) in enumerate(zip(snapshot, sample.args)):
        if isinstance(before, torch.Tensor) and i not in sample.mutated:
            assert_bits_equal(after, before, f"{op}: input {i} was modified")
    return got, want, spec


def _params(spec):
    names = list(spec.params or {})
    return [dict(zip(names, v)) for v in itertools.product(*(spec.params[n] for n in names))]


# ------------------------------------------------------------------------------------------------- the op sweep
SHAPES = [(1, 1), (3, 3), (2, 7), (7, 784), (3, 3072)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rows,cols", SHAPES, ids=[f"{r}x{c}" for r, c in SHAPES])
@pytest.mark.parametrize("op", list(OPS))
def test_kernel_matches_reference(device, op, rows, cols, variant):
    """The sample table of tests/ops/test_parity.py (ties, zeros, NaN, bf16/fp16, channels_last, non-contiguous)."""
    spec = SPECS[op]
    for params in _params(spec):
        sample = spec.make(rows, cols, variant, torch.Generator().manual_seed(rows * 7919 + cols), "cpu", **params)
        got, want, spec = _run_both(device, op, sample)
        _compare(got, want, spec, f"{op} {rows}x{cols} {variant} {params}")


# ------------------------------------------------------------------------------------- zerograd: every launch path
def _zg_case(rows, cols, variant="random", q=0.35, seed=0):
    return SPECS["zerograd_step"].make(rows, cols, variant, torch.Generator().manual_seed(seed), "cpu", q=q)


def _kernels(log):
    return [line.split(" grid=")[0] for line in log if not line.startswith(" ")]


ZG_PATHS = [
    # (rows, cols, device settings, the kernels launched, in order)
    (3, 16384, {}, ["zerograd_smem_kernel<float, float, 256, false>"]),  # 64 KB of dynamic shared memory (opt-in)
    (2, 16385, {}, ["zerograd_smem_kernel<float, float, 512, true>"]),  # the smallest cluster row (2 blocks)
    (1, 150528, {}, ["zerograd_smem_kernel<float, float, 512, true>"]),  # 224x224x3: a cluster of 8
    (2, 40000, {"clusters": False}, ["zerograd_stream_kernel<float, float, 512>"]),  # no clusters (pre-sm_90)
    (2, 40000, {"max_active_clusters": 0}, ["zerograd_stream_kernel<float, float, 512>"]),  # cluster does not fit
    (2, 40000, {"refuse_cluster_launch": True},  # refused at launch: falls back
     ["zerograd_smem_kernel<float, float, 512, true>", "zerograd_stream_kernel<float, float, 512>"]),
    # devices that cannot give a row's shared memory (static + dynamic): stream
    (2, 14000, {"smem_optin": 40 * 1024}, ["zerograd_stream_kernel<float, float, 512>"]),  # one block: 56000 B
    (2, 16385, {"smem_optin": 48 * 1024}, ["zerograd_stream_kernel<float, float, 512>"]),  # cluster: 32784 + static
    (2, 40000, {"smem_optin": 64 * 1024}, ["zerograd_stream_kernel<float, float, 512>"]),  # cluster: 53344 + static
    # clusters on the GPU, but the kernel's code was built for sm_80 (its cluster branch traps): stream
    (2, 40000, {"ptx_version": 80}, ["zerograd_stream_kernel<float, float, 512>"]),
    (1, 8 * 40960 + 1, {}, ["zerograd_stream_kernel<float, float, 512>"]),  # too long for a cluster
]


@pytest.mark.parametrize("rows,cols,settings,kernels", ZG_PATHS,
                         ids=[f"{r}x{c}-{'-'.join(s) or 'h100'}" for r, c, s, _ in ZG_PATHS])
def test_zerograd_launch_paths(device, rows, cols, settings, kernels):
    emu.configure(device, **settings)
    for variant, q in (("random", 0.35), ("ties", 0.7)):
        sample = _zg_case(rows, cols, variant, q=q)
        got, want, spec = _run_both(device, "zerograd_step", sample)
        _compare(got, want, spec, f"zerograd {rows}x{cols} {variant} q={q} {settings}")
        assert _kernels(emu.take_log(device)) == kernels


@pytest.mark.parametrize("q", [0.0, 1e-7, 0.35, 0.5, 0.999, 1.0])
@pytest.mark.parametrize("variant", ["random", "ties", "zeros", "nan", "grad_bf16", "grad_fp16"])
def test_zerograd_cluster_quantiles(device, variant, q):
    """The cluster path's distributed histograms at the extreme ranks, with ties, zeros and NaN spread over blocks."""
    sample = _zg_case(3, 20011, variant, q=q, seed=3)
    got, want, spec = _run_both(device, "zerograd_step", sample)
    _compare(got, want, spec, f"zerograd cluster {variant} q={q}")


def test_zerograd_ties_at_the_threshold(device):
    """Rows made of a few magnitudes, so that lo and hi order statistics fall in and just past a run of ties."""
    for cols in (9, 784, 20000):
        n = cols
        for q in (0.25, 0.5, 0.75):
            g = torch.tensor([1.0, -2.0, 2.0, 3.0] * ((n + 3) // 4))[:n].repeat(2, 1)
            x = torch.full((2, n), 0.5)
            d = torch.zeros(2, n)
            got = emu.zerograd_step(device, d, g, x, 0.1, 0.2, q)
            assert_bits_equal(got, reference.zerograd_step(d, g, x, 0.1, 0.2, q))


# --------------------------------------------------------------------------------------------- ATAS: both paths
ATAS_CASES = [
    # (rows, (C, H, W), device settings, FASTAT_CUDA_ATAS_PATH, expected path, kernels)
    (3, (3, 8, 8), {}, None, "fused", ["atas_step_fused_kernel<float, float, float, false>"]),
    (2, (3, 32, 32), {}, None, "fused", ["atas_step_fused_kernel<float, float, float, true>"]),  # cluster of 3
    (2, (3, 32, 32), {"clusters": False}, None, "split",
     ["atas_norm_kernel<float>", "atas_update_kernel<float, float, float>"]),
    (2, (3, 32, 32), {"max_active_clusters": 0}, None, "split",
     ["atas_norm_kernel<float>", "atas_update_kernel<float, float, float>"]),
    (2, (3, 32, 32), {"refuse_cluster_launch": True}, None, "split",
     ["atas_step_fused_kernel<float, float, float, true>", "atas_norm_kernel<float>",
      "atas_update_kernel<float, float, float>"]),
    (2, (3, 32, 32), {}, "split", "split", ["atas_norm_kernel<float>", "atas_update_kernel<float, float, float>"]),
    (1, (3, 100, 100), {}, "split", "split",  # several norm chunks per row, several tiles per plane
     ["atas_norm_kernel<float>", "atas_update_kernel<float, float, float>"]),
    (1, (3, 100, 100), {}, None, "fused", ["atas_step_fused_kernel<float, float, float, true>"]),  # cluster of 8
    (2, (3, 32, 32), {"ptx_version": 80}, None, "split",  # built for sm_80, run on a cluster GPU
     ["atas_norm_kernel<float>", "atas_update_kernel<float, float, float>"]),
    (8, (3, 32, 32), {"clusters": False, "sm_count": 1}, None, "fused",  # a batch that fills the GPU: 1 block/row
     ["atas_step_fused_kernel<float, float, float, false>"]),
]


def _atas_sample(rows, chw, seed=0, warmup=False, variant="random"):
    cols = chw[0] * chw[1] * chw[2]
    from fastat.ops import _specs

    saved = dict(_specs.IMAGE_SHAPES)
    _specs.IMAGE_SHAPES[cols] = chw
    try:
        return SPECS["atas_step"].make(rows, cols, variant, torch.Generator().manual_seed(seed), "cpu", warmup=warmup)
    finally:
        _specs.IMAGE_SHAPES.clear()
        _specs.IMAGE_SHAPES.update(saved)


@pytest.mark.parametrize("rows,chw,settings,env,path,kernels", ATAS_CASES,
                         ids=[f"{r}x{'x'.join(map(str, s))}-{'-'.join(st) or 'h100'}-{e or 'auto'}"
                              for r, s, st, e, _, _ in ATAS_CASES])
def test_atas_step_paths(device, monkeypatch, rows, chw, settings, env, path, kernels):
    if env:
        monkeypatch.setenv("FASTAT_CUDA_ATAS_PATH", env)
    emu.configure(device, **settings)
    for warmup in (False, True):
        sample = _atas_sample(rows, chw, warmup=warmup)
        taken: list = []
        args, want_args = _clone_mutated(sample), _clone_mutated(sample)
        want = (reference.atas_step(*want_args, **sample.kwargs), want_args[0], want_args[1])
        got = (emu.atas_step(device, *args, **sample.kwargs, path=taken), args[0], args[1])
        _compare(got, want, SPECS["atas_step"], f"atas_step {rows}x{chw} {settings} {env} warmup={warmup}")
        log = _kernels(emu.take_log(device))
        assert taken == [path]
        assert log == ([k for k in kernels if "norm" not in k] if warmup else kernels)


def test_atas_step_repeated_calls_are_bit_identical(device):
    """The cluster's partial sums are added in rank order: the same inputs give the same v and outputs every time."""
    sample = _atas_sample(2, (3, 64, 64))
    outs = []
    for _ in range(2):
        args = _clone_mutated(sample)
        outs.append((emu.atas_step(device, *args, **sample.kwargs), args[0], args[1]))
    for a, b in zip(*outs):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


def test_atas_out_of_range_index_and_offsets_are_clamped(device):
    """The kernels clamp index/offsets into range (CUDA does not check values): never an access outside delta_buf."""
    sample = _atas_sample(4, (1, 6, 5), seed=1)
    delta_buf, v_buf, index, offsets, flips, g, x_adv, x = sample.args
    n, hp_h = delta_buf.shape[0], delta_buf.shape[2] - x.shape[2]
    bad_index = torch.tensor([-5, n + 10, 0, n - 1])
    bad_offsets = torch.tensor([[-3, 99], [99, -3], [0, 0], [hp_h, hp_h]])
    clamped_index = bad_index.clamp(0, n - 1)
    clamped_offsets = bad_offsets.clamp(0, hp_h)
    got = emu.atas_gather(device, delta_buf, bad_index, bad_offsets, flips, x)
    want = reference.atas_gather(delta_buf, clamped_index, clamped_offsets, flips, x)
    assert_bits_equal(got, want)
    for env_path in ("fused", "split"):
        buf_g, v_g, buf_w, v_w = delta_buf.clone(), v_buf.clone(), delta_buf.clone(), v_buf.clone()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FASTAT_CUDA_ATAS_PATH", env_path)
            out_g = emu.atas_step(device, buf_g, v_g, bad_index[:2].unique(), bad_offsets[:2], flips[:2], g[:2],
                                  x_adv[:2], x[:2], **sample.kwargs)
        out_w = reference.atas_step(buf_w, v_w, clamped_index[:2], clamped_offsets[:2], flips[:2], g[:2], x_adv[:2],
                                    x[:2], **sample.kwargs)
        _compare((out_g, buf_g, v_g), (out_w, buf_w, v_w), SPECS["atas_step"], f"atas_step clamped {env_path}")


def test_atas_dtypes(device):
    """Every (grad, state, buffer) dtype combination the dispatch instantiates, on both paths."""
    sample = _atas_sample(2, (3, 16, 16), seed=2)
    delta_buf, v_buf, index, offsets, flips, g, x_adv, x = sample.args
    for gd, dd, bd in itertools.product((torch.float32, torch.bfloat16, torch.float16), repeat=3):
        for env_path in ("fused", "split"):
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("FASTAT_CUDA_ATAS_PATH", env_path)
                bg, vg = delta_buf.to(bd), v_buf.clone()
                out_g = emu.atas_step(device, bg, vg, index, offsets, flips, g.to(gd), x_adv.to(dd), x.to(dd),
                                      **sample.kwargs)
            bw, vw = delta_buf.to(bd), v_buf.clone()
            out_w = reference.atas_step(bw, vw, index, offsets, flips, g.to(gd), x_adv.to(dd), x.to(dd),
                                        **sample.kwargs)
            _compare((out_g, bg, vg), (out_w, bw, vw), SPECS["atas_step"], f"atas {gd} {dd} {bd} {env_path}")
            assert_bits_equal(emu.atas_gather(device, bw, index, offsets, flips, x.to(dd)),
                                       reference.atas_gather(bw, index, offsets, flips, x.to(dd)))


# ------------------------------------------------------------------------------- pgd / multigrad: vector paths
@pytest.mark.parametrize("cols", [4, 4096, 4098, 4100, 8193])  # 4096-element tiles: one, several, ragged; n % 4
@pytest.mark.parametrize("misaligned", [False, True])
def test_pgd_step_vector_and_scalar_paths(device, cols, misaligned):
    sample = SPECS["pgd_step"].make(5, cols, "random", torch.Generator().manual_seed(cols), "cpu")
    delta, grad, x, eps, alpha, active = sample.args
    if misaligned:  # a storage offset of one element: the 16-byte vector loads are not allowed
        grad = torch.cat([torch.zeros(1), grad.flatten()])[1:].view_as(grad)
    got = emu.pgd_step(device, delta, grad, x, eps, alpha, active)
    assert_bits_equal(got, reference.pgd_step(delta, grad, x, eps, alpha, active))
    vec = "true" if cols % 4 == 0 and not misaligned else "false"
    assert _kernels(emu.take_log(device)) == [f"pgd_step_kernel<float, float, {vec}>"]


@pytest.mark.parametrize("starts,threshold", [(1, None), (3, None), (3, 2), (5, 3), (8, None)])
@pytest.mark.parametrize("misaligned", [False, True])
def test_multigrad_step_vector_and_scalar_paths(device, starts, threshold, misaligned):
    sample = SPECS["multigrad_step"].make(3, 3072, "ties", torch.Generator().manual_seed(starts), "cpu",
                                          starts=starts, threshold=threshold)
    grads, x, eps, alpha, th = sample.args
    if misaligned:
        grads = torch.cat([torch.zeros(1), grads.flatten()])[1:].view_as(grads)
    got = emu.multigrad_step(device, grads, x, eps, alpha, th)
    assert_bits_equal(got, reference.multigrad_step(grads, x, eps, alpha, th))
    vec = "true" if not misaligned else "false"
    assert _kernels(emu.take_log(device))[0].endswith(f"{vec}>")


def test_grid_stride_loops_with_few_sms(device):
    """With a 1-SM device the grid-stride kernels run a few blocks that loop over many tiles."""
    emu.configure(device, sm_count=1)
    sample = SPECS["multigrad_step"].make(8, 3072, "random", torch.Generator().manual_seed(5), "cpu")
    grads, x, eps, alpha, th = sample.args
    assert_bits_equal(emu.multigrad_step(device, grads, x, eps, alpha, th),
                               reference.multigrad_step(grads, x, eps, alpha, th))
    assert "grid=16 " in emu.take_log(device)[0]


# --------------------------------------------------------------------------------------------------- uniform_init
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def philox4x32_10(ctr, key):
    """Philox4x32-10 (Salmon et al., Random123), the generator of curand and torch's CUDA RNG."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(10):
        p0, p1 = _PHILOX_M[0] * c0, _PHILOX_M[1] * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & 0xFFFFFFFF, p1 & 0xFFFFFFFF, ((p0 >> 32) ^ c3 ^ k1) & 0xFFFFFFFF, \
            p0 & 0xFFFFFFFF
        k0, k1 = (k0 + _PHILOX_W[0]) & 0xFFFFFFFF, (k1 + _PHILOX_W[1]) & 0xFFFFFFFF
    return c0, c1, c2, c3


def test_philox_reference_known_answers():
    """The Python Philox used below reproduces Random123's known-answer vectors (kat_vectors, philox4x32_10)."""
    assert philox4x32_10((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert philox4x32_10((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == (
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


@pytest.mark.parametrize("numel", [1, 5, 4096, 10001])
def test_uniform_init_is_philox(device, numel):
    """Element e = (word e%4 of Philox(counter=(offset/4, e/4), key=seed)) >> 8, scaled to [-eps, eps) and boxed.

    eps = 2^-3 and x = 0.5 make every step exact in fp32, so the kernel's words can be read back and compared."""
    seed, offset = 0x1234_5678_9ABC_DEF0, 8 * 4
    eps = 0.125
    x = torch.full((numel,), 0.5)
    out = emu.uniform_init(device, x, eps, seed, offset)
    words = ((out.double() + eps) / (2 * eps) * 2**24).round().long().tolist()
    key = (seed & 0xFFFFFFFF, seed >> 32)
    block = offset // 4
    for e in sorted({0, 1, 2, 3, numel // 2, numel - 1} & set(range(numel))):
        r = philox4x32_10((block & 0xFFFFFFFF, block >> 32, (e // 4) & 0xFFFFFFFF, (e // 4) >> 32), key)
        assert words[e] == r[e % 4] >> 8, f"element {e}"
    assert torch.equal(out, emu.uniform_init(device, x, eps, seed, offset))  # deterministic
    assert not torch.equal(out, emu.uniform_init(device, x, eps, seed, offset + 4))  # the offset moves the stream


def test_uniform_init_under_graph_capture_reads_the_device_state(device):
    """Captured (CUDA-graph) form: seed and offset come from device memory (+ the intra-graph offset), so each replay
    draws what an eager call with those values draws; a null pointer is refused."""
    x = torch.rand(2, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    seed, offset = torch.tensor([987654321987], dtype=torch.int64), torch.tensor([40], dtype=torch.int64)
    out = emu._Guarded(x)
    emu._check(device, "captured", device.emu_uniform_init_captured(x.data_ptr(), out.t.data_ptr(), 0, x.numel(), 0.2,
                                                                    seed.data_ptr(), offset.data_ptr(), 8))
    got = out.check("captured")
    assert torch.equal(got, emu.uniform_init(device, x, 0.2, 987654321987, 48))
    assert device.emu_uniform_init_captured(x.data_ptr(), out.t.data_ptr(), 0, x.numel(), 0.2, None,
                                            offset.data_ptr(), 0) != 0  # cudaErrorInvalidValue


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_uniform_init_grid_stride_and_storage_dtypes(device, dtype):
    """Few SMs, so each thread loops over several Philox groups; fp16/bf16 outputs are the exact fp32 values
    rounded once."""
    emu.configure(device, sm_count=1)  # 16 blocks of 256 threads for 5000 groups
    numel, seed, offset, eps = 20001, 77, 12, 0.125
    out = emu.uniform_init(device, torch.full((numel,), 0.5, dtype=dtype), eps, seed, offset)
    assert "grid=16 " in emu.take_log(device)[0]
    words = []
    for j in range((numel + 3) // 4):
        words += philox4x32_10((offset // 4, 0, j, 0), (seed, 0))
    u = torch.tensor([w >> 8 for w in words[:numel]], dtype=torch.float64) * 2.0**-24
    want = (u * (2 * eps) - eps).float().to(dtype)  # exact in fp32 for eps = 2^-3, then one rounding
    assert_bits_equal(out, want, f"uniform_init {dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_uniform_init_bounds_and_box(device, dtype):
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x.view(-1)[:2] = torch.tensor([0.0, 1.0])
    x = x.to(dtype)
    d = emu.uniform_init(device, x, 0.3, 42, 0)  # the perturbation, boxed so that x + d stays in [0, 1]
    out, d, xf = d, d.float(), x.float()
    assert out.dtype == dtype and not out.isnan().any()
    assert (xf + d).min() >= 0 and (xf + d).max() <= 1
    assert d.abs().max() <= 0.3 * (1 + torch.finfo(dtype).eps)
    assert d.std() > 0.05  # not a constant


# ----------------------------------------------------------------------------------------- empty and bad launches
def test_empty_and_invalid_sizes(device):
    z = torch.zeros(0, 5)
    assert emu.zerograd_step(device, z, z, z, 0.1, 0.2, 0.5).shape == (0, 5)
    assert emu.pgd_step(device, z, z, z, 0.1, 0.2).shape == (0, 5)
    assert emu.take_log(device) == []  # nothing launched for an empty batch
    # images of no elements: v is still updated (the fused launcher takes them, one block per row)
    x = torch.zeros(2, 0, 4, 4)
    index, offsets, flips = torch.tensor([1, 3]), torch.zeros(2, 2, dtype=torch.long), torch.tensor([True, False])
    kw = SPECS["atas_step"].make(1, 3, "random", torch.Generator().manual_seed(0), "cpu").kwargs
    bufs = [(torch.zeros(5, 0, 8, 8), torch.rand(5, generator=torch.Generator().manual_seed(1))) for _ in range(2)]
    taken: list = []
    emu.atas_step(device, *bufs[0], index, offsets, flips, x, x, x, **kw, path=taken)
    reference.atas_step(*bufs[1], index, offsets, flips, x, x, x, **kw)
    assert taken == ["fused"] and torch.equal(bufs[0][1], bufs[1][1])
    assert not torch.equal(bufs[0][1], torch.rand(5, generator=torch.Generator().manual_seed(1)))


def test_float16_and_bfloat16_round_like_torch(device):
    """The kernels' from_float<T>/to_float on the emulator's fp16/bf16 round like torch's .to(): nearest even,
    overflow to inf, subnormals, NaN."""
    special = [0.0, -0.0, 1.0, 65504.0, 65519.0, 65520.0, 1e-8, 2.9e-8, 3e-8, 6e-8, -3.14159, float("inf"),
               float("-inf"), float("nan"), 3.0e38, -1.17549435e-38, 1.00048828125, 1.0009765625]
    bits = [0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x00000001, 0x807FFFFF, 0x3F800001, 0x477FF000, 0x477FEFFF]
    vals = torch.tensor(special + [struct.unpack("f", struct.pack("I", b))[0] for b in bits])
    vals = torch.cat([vals, torch.randn(5000, generator=torch.Generator().manual_seed(0)) * 10.0 ** torch.randint(
        -9, 6, (5000,), generator=torch.Generator().manual_seed(1))])
    for code, dtype in ((2, torch.float16), (1, torch.bfloat16)):
        out = torch.empty_like(vals)
        device.emu_round_trip(vals.data_ptr(), out.data_ptr(), vals.numel(), code)
        assert_bits_equal(out, vals.to(dtype).float(), f"{dtype}")


# -------------------------------------------------------------------------------------------- random cases
@pytest.mark.parametrize("seed", range(20))
def test_random_cases(device, seed):
    """Random row lengths (around the path boundaries too), dtypes, q and emulated devices, seeded."""
    import random

    rng = random.Random(seed)
    settings = [{}, {"clusters": False}, {"sm_count": rng.randint(1, 200)}, {"max_active_clusters": 0},
                {"smem_optin": rng.choice([0, 48 * 1024, 100 * 1024])}, {"ptx_version": 80},
                {"refuse_cluster_launch": True}][seed % 7]
    emu.configure(device, **settings)
    gen = torch.Generator().manual_seed(seed)
    dt, gdt, bdt = (rng.choice(_FLOATS) for _ in range(3))
    what = f"seed={seed} {settings} {dt} {gdt} {bdt}"
    # ZeroGrad
    rows = rng.randint(1, 3)
    n = rng.choice([rng.randint(1, 3000), rng.randint(16000, 17000), rng.randint(30000, 90000)])
    x, d = torch.rand(rows, n, generator=gen).to(dt), ((torch.rand(rows, n, generator=gen) - 0.5) * 0.3).to(dt)
    g = torch.randn(rows, n, generator=gen)
    g = torch.round(g * rng.choice([1, 2, 4])) / 4 if rng.random() < 0.5 else g
    g[torch.rand(rows, n, generator=gen) < rng.random() * 0.5] = 0
    g = g.to(gdt)
    q = rng.choice([0.0, 1.0, rng.random()])
    assert_bits_equal(emu.zerograd_step(device, d, g, x, 0.1, 0.2, q),
                               reference.zerograd_step(d, g, x, 0.1, 0.2, q), f"zerograd {rows}x{n} q={q} {what}")
    # ATAS, both ops, odd images and pads
    b, c, h, w, p = rng.randint(1, 4), rng.randint(1, 3), rng.randint(1, 60), rng.randint(1, 60), rng.randint(0, 4)
    n_ex = b + rng.randint(0, 3)
    x = torch.rand(b, c, h, w, generator=gen).to(dt)
    x_adv = (x.float() + 0.05 * torch.randn(b, c, h, w, generator=gen)).clamp(0, 1).to(dt)
    g = (torch.randn(b, c, h, w, generator=gen) * 0.05 / (c * h * w) ** 0.5).to(gdt)
    buf = ((torch.rand(n_ex, c, h + 2 * p, w + 2 * p, generator=gen) * 2 - 1) * 0.1).to(bdt)
    v = torch.rand(n_ex, generator=gen) * 0.0025
    idx = torch.randperm(n_ex, generator=gen)[:b]
    off, fl = torch.randint(0, 2 * p + 1, (b, 2), generator=gen), torch.rand(b, generator=gen) < 0.5
    kw = dict(SPECS["atas_step"].make(1, 3, "random", gen, "cpu").kwargs, warmup=rng.random() < 0.3)
    assert_bits_equal(emu.atas_gather(device, buf, idx, off, fl, x),
                               reference.atas_gather(buf, idx, off, fl, x), f"atas_gather {what}")
    b1, v1, b2, v2 = buf.clone(), v.clone(), buf.clone(), v.clone()
    got = emu.atas_step(device, b1, v1, idx, off, fl, g, x_adv, x, **kw)
    want = reference.atas_step(b2, v2, idx, off, fl, g, x_adv, x, **kw)
    # the step size's sqrt/divide may differ by an ulp; it can then round the stored values one ulp of their dtype apart
    for name, a, e, dtype in (("out", got, want, dt), ("delta_buf", b1, b2, bdt)):
        torch.testing.assert_close(a, e, rtol=torch.finfo(dtype).eps if dtype != torch.float32 else 0,
                                   atol=SPECS["atas_step"].atol, msg=lambda m: f"atas_step {name} {what}: {m}")
    assert_bits_equal(v1, v2, f"atas_step v {what}")
    # PGD with a mask, MultiGrad with a random threshold
    rows, n = rng.randint(1, 5), rng.randint(1, 9000)
    x, d = torch.rand(rows, n, generator=gen).to(dt), ((torch.rand(rows, n, generator=gen) - 0.5) * 0.3).to(dt)
    g = torch.randn(rows, n, generator=gen).to(gdt)
    active = torch.rand(rows, generator=gen) < 0.5 if rng.random() < 0.5 else None
    assert_bits_equal(emu.pgd_step(device, d, g, x, 0.1, 0.03, active),
                               reference.pgd_step(d, g, x, 0.1, 0.03, active))
    starts = rng.randint(1, 6)
    grads = torch.randn(starts, rows, 1, 1, n, generator=gen)
    grads[torch.rand(grads.shape, generator=gen) < 0.1] = 0
    grads = grads.to(gdt)
    th = rng.choice([None, *range(1, starts + 1)])
    xs = x.view(rows, 1, 1, n)
    assert_bits_equal(emu.multigrad_step(device, grads, xs, 0.1, 0.2, th),
                               reference.multigrad_step(grads, xs, 0.1, 0.2, th))


# ------------------------------------------------------------------------------------------------------ full sizes
FULL = [("zerograd_step", 512, 3072), ("zerograd_step", 64, 150528), ("atas_step", 64, 150528),
        ("atas_gather", 64, 150528), ("pgd_step", 512, 3072), ("multigrad_step", 128, 3072)]


@pytest.mark.slow  # about 50 s in all on 2 cores
@pytest.mark.parametrize("op,rows,cols", FULL, ids=[f"{o}-{r}x{c}" for o, r, c in FULL])
def test_full_sizes(device, op, rows, cols):
    """The sizes of the benchmarks and GPU parity tests (224x224x3 rows: clusters of 8 for ZeroGrad and ATAS)."""
    emu.configure(device, schedule_seed=0)  # in order: the shuffle costs time and the sweep above already shuffles
    sample = SPECS[op].make(rows, cols, "random", torch.Generator().manual_seed(rows + cols), "cpu")
    got, want, spec = _run_both(device, op, sample)
    _compare(got, want, spec, f"{op} {rows}x{cols}")


# ------------------------------------------------------------------------------- cases the sample table misses
@pytest.mark.parametrize("cols", [4, 784, 20010])  # one block, one block, a cluster of 2
def test_zerograd_interpolation_weight_one_half(device, cols):
    """q = 0.5 on an even row: rank (n-1)/2 has w = 0.5 exactly, where torch's lerp switches from the low-end to the
    high-end formula, with half of each row in [1, 2) and half in [2^20, 2^21) so that the median falls in a gap.
    (The two formulas round apart there about half the time, but tau only shows through the mask |g| >= tau, and no
    element lies strictly between the two order statistics: the choice cannot change an output.)"""
    gen = torch.Generator().manual_seed(cols)
    low = 1 + torch.rand(8, cols // 2, generator=gen)
    high = 2.0**20 * (1 + torch.rand(8, cols - cols // 2, generator=gen))
    g = torch.cat([low, high], 1)[:, torch.randperm(cols, generator=gen)]
    g = torch.where(torch.rand(g.shape, generator=gen) < 0.5, -g, g)
    x, d = torch.full_like(g, 0.5), torch.zeros_like(g)
    assert_bits_equal(emu.zerograd_step(device, d, g, x, 0.1, 0.2, 0.5),
                      reference.zerograd_step(d, g, x, 0.1, 0.2, 0.5))


@pytest.mark.parametrize("cols", [9, 784, 20011])
def test_zerograd_infinite_gradients(device, cols):
    """±inf in |g| ranks above every finite value and below NaN: tau may be inf (then only the infs are kept)."""
    gen = torch.Generator().manual_seed(cols)
    g = torch.randn(4, cols, generator=gen)
    g[0, ::3] = float("inf")  # a third of the row: the 0.7-quantile lands among them
    g[1, 0] = float("-inf")
    g[2, :] = float("inf")
    g[3, 1], g[3, 2] = float("inf"), float("nan")  # NaN wins: nothing kept
    x, d = torch.full_like(g, 0.5), torch.zeros_like(g)
    for q in (0.3, 0.7, 1.0):
        assert_bits_equal(emu.zerograd_step(device, d, g, x, 0.1, 0.2, q),
                          reference.zerograd_step(d, g, x, 0.1, 0.2, q), f"q={q}")


@pytest.mark.parametrize("n,clusters", [(2, True), (784, True), (20002, True), (20002, False)],
                         ids=["2", "784", "20002-cluster", "20002-stream"])
def test_zerograd_inf_at_the_quantile(device, n, clusters):
    """±inf must not count as NaN; at w = 0.5 with the hi-th value inf, torch's lerp gives NaN (inf - inf·0.5), so
    nothing is kept, while the other lerp formula would give inf and keep the infs."""
    emu.configure(device, clusters=clusters)
    gen = torch.Generator().manual_seed(n)
    g = torch.randn(2, n, generator=gen)
    sign = torch.where(torch.rand(2, n, generator=gen) < 0.5, -1.0, 1.0)
    g[0, torch.randperm(n, generator=gen)[: n // 2]] = float("inf")  # row 0: the hi-th is inf, the lo-th finite
    g[0] *= sign[0]
    g[1, torch.randperm(n, generator=gen)[: max(1, n // 10)]] = float("-inf")  # row 1: a few infs, tau finite
    x, d = torch.full((2, n), 0.5), torch.zeros(2, n)
    for q in (0.5, 0.35, 1.0):
        assert_bits_equal(emu.zerograd_step(device, d, g, x, 0.1, 0.2, q),
                          reference.zerograd_step(d, g, x, 0.1, 0.2, q), f"n={n} q={q}")


def test_atas_cluster_partials_add_in_rank_order(device):
    """A cluster of 3 blocks, one nonzero g per block's slice, chosen so that the fp64 sum of the three partials
    rounds to a different fp32 in rank order (0, 1, 2: what the reference's sum gives too) than in another order."""
    sample = _atas_sample(1, (3, 32, 32), seed=5)
    delta_buf, v_buf, index, offsets, flips, g, x_adv, x = sample.args
    g = torch.zeros_like(g)
    gf = g.view(-1)
    gf[0], gf[1024], gf[2048] = 1.0188270807266235, 5.780956053058617e-05, 8.06960160844028e-05
    v_buf = torch.zeros_like(v_buf)
    taken: list = []
    bg, vg, bw, vw = delta_buf.clone(), v_buf.clone(), delta_buf.clone(), v_buf.clone()
    emu.atas_step(device, bg, vg, index, offsets, flips, g, x_adv, x, **sample.kwargs, path=taken)
    reference.atas_step(bw, vw, index, offsets, flips, g, x_adv, x, **sample.kwargs)
    assert "cluster=3" in emu.take_log(device)[-1] and taken == ["fused"]
    p = [float(v) ** 2 for v in (gf[0], gf[1024], gf[2048])]
    in_order = torch.tensor((p[0] + p[1]) + p[2], dtype=torch.float64).float()
    assert in_order != torch.tensor((p[2] + p[1]) + p[0], dtype=torch.float64).float()  # the inputs do tell apart
    want = in_order * 0.5  # v_old = 0, beta = 0.5
    assert vg[index[0]].item() == want.item() == vw[index[0]].item()


@pytest.mark.parametrize("path", ["fused", "split"])
def test_atas_step_other_hyper_parameters(device, monkeypatch, path):
    """beta ≠ 1/2 (the sample table's 0.5 makes beta and 1 - beta interchangeable), step bounds that bind, warm-up."""
    monkeypatch.setenv("FASTAT_CUDA_ATAS_PATH", path)
    sample = _atas_sample(3, (3, 32, 32), seed=4)
    for kw in (dict(beta=0.9), dict(beta=0.0), dict(beta=1.0), dict(step_min=0.05, step_max=0.06),
               dict(c=0.5, gamma_over_c=1.5), dict(eps=8 / 255, beta=0.99)):
        kwargs = dict(sample.kwargs, **kw)
        args, want_args = _clone_mutated(sample), _clone_mutated(sample)
        got = (emu.atas_step(device, *args, **kwargs), args[0], args[1])
        want = (reference.atas_step(*want_args, **kwargs), want_args[0], want_args[1])
        _compare(got, want, SPECS["atas_step"], f"atas_step {path} {kw}")
