"""Which kernels the CUDA launchers choose, and how they launch them: on an emulated device configured to take each
launch path and fallback (no clusters, a cluster that does not fit or whose launch is refused, less shared memory,
kernels built for sm_80, few SMs), read from the emulator's launch log, with the outputs checked against
fastat.ops.reference as elsewhere. Emulator only (FASTAT_CUDA_TESTS_ON_CPU=emu): a GPU is the device it is and keeps
no such log; its own paths are the full shapes of test_cuda_ops.py and FASTAT_CUDA_ATAS_PATH there.

Also here: uniform_init's captured (CUDA-graph) launcher form, called with device-side seed and offset directly."""

from __future__ import annotations

import itertools

import pytest
import torch

from fastat.ops import reference
from fastat.ops._specs import ATAS_KWARGS, SPECS, sample_zerograd_step

from ._dryrun import DEV, emulator, emulator_only
from ._philox import expected_uniform, uniform_init_at
from .test_cuda_atas_cases import atas_sample
from .test_cuda_ops import _cuda_kernels_built  # noqa: F401  (fixture used here)
from .test_cuda_ops import F, assert_exact
from .test_cuda_sample_table import check_sample

pytestmark = [pytest.mark.cuda, emulator_only]

FLOATS = (torch.float32, torch.bfloat16, torch.float16)


@pytest.fixture(scope="module", autouse=True)
def _static_shared_memory_learned():
    """Runs every ZeroGrad kernel whose launch decision depends on its static shared memory once, so that the
    emulator knows those sizes (it learns them from the __shared__ declarations a kernel executes) and answers
    cudaFuncGetAttributes the way a GPU would from the first decision of each test on."""
    from cuda_emu import emulator as emu

    lib = emulator()
    emu.configure(lib)
    for dt, gdt in itertools.product(FLOATS, repeat=2):
        for n in (7, 16385):
            z = torch.zeros(1, n)
            F.zerograd_step(z.to(dt), z.to(gdt), z.to(dt), 0.1, 0.2, 0.5)
    emu.take_log(lib)


# ------------------------------------------------------------------------------------------ zerograd: every path
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
def test_zerograd_launch_paths(emulated_device, rows, cols, settings, kernels):
    emulated_device.configure(**settings)
    for variant, q in (("random", 0.35), ("ties", 0.7)):
        sample = sample_zerograd_step(rows, cols, variant, torch.Generator(DEV).manual_seed(0), DEV, q=q)
        check_sample("zerograd_step", sample, f"zerograd {rows}x{cols} {variant} q={q} {settings}")
        assert emulated_device.kernels() == kernels


def test_an_empty_batch_launches_nothing(emulated_device):
    z = torch.zeros(0, 5)
    assert F.zerograd_step(z, z, z, 0.1, 0.2, 0.5).shape == (0, 5)
    assert F.pgd_step(z, z, z, 0.1, 0.2).shape == (0, 5)
    assert emulated_device.kernels() == []


# ------------------------------------------------------------------------------------------- ATAS: both paths
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


def _atas_path(kernels: list[str]) -> str:
    """The path a launch log shows: split if the update kernel ran (after a refused fused launch too)."""
    return "split" if any("atas_update_kernel" in k for k in kernels) else \
        "fused" if any("atas_step_fused_kernel" in k for k in kernels) else "none"


@pytest.mark.parametrize("rows,chw,settings,env,path,kernels", ATAS_CASES,
                         ids=[f"{r}x{'x'.join(map(str, s))}-{'-'.join(st) or 'h100'}-{e or 'auto'}"
                              for r, s, st, e, _, _ in ATAS_CASES])
def test_atas_step_paths(emulated_device, monkeypatch, rows, chw, settings, env, path, kernels):
    if env:
        monkeypatch.setenv("FASTAT_CUDA_ATAS_PATH", env)
    emulated_device.configure(**settings)
    for warmup in (False, True):
        sample = atas_sample(monkeypatch, rows, chw, warmup=warmup)
        check_sample("atas_step", sample, f"atas_step {rows}x{chw} {settings} {env} warmup={warmup}")
        launched = emulated_device.kernels()
        assert _atas_path(launched) == path
        assert launched == ([k for k in kernels if "norm" not in k] if warmup else kernels)  # warm-up: no norms


def test_atas_step_takes_images_of_no_elements_on_the_fused_path(emulated_device):
    """Images of no elements: v is still updated (‖g‖² = 0), by the fused launcher, one block per row."""
    x = torch.zeros(2, 0, 4, 4)
    index, offsets, flips = torch.tensor([1, 3]), torch.zeros(2, 2, dtype=torch.long), torch.tensor([True, False])
    v_start = torch.rand(5, generator=torch.Generator().manual_seed(1))
    (buf, v), (buf_want, v_want) = [(torch.zeros(5, 0, 8, 8), v_start.clone()) for _ in range(2)]
    F.atas_step(buf, v, index, offsets, flips, x, x, x, **ATAS_KWARGS, warmup=False)
    assert _atas_path(emulated_device.kernels()) == "fused"
    reference.atas_step(buf_want, v_want, index, offsets, flips, x, x, x, **ATAS_KWARGS, warmup=False)
    assert_exact(v, v_want)
    assert not torch.equal(v, v_start)


# ------------------------------------------------------------------------------- pgd / multigrad: vector paths
@pytest.mark.parametrize("cols", [4, 4096, 4098, 4100, 8193])  # 4096-element tiles: one, several, ragged; n % 4
@pytest.mark.parametrize("misaligned", [False, True])
def test_pgd_step_vector_and_scalar_paths(emulated_device, cols, misaligned):
    sample = SPECS["pgd_step"].make(5, cols, "random", torch.Generator().manual_seed(cols), DEV)
    delta, grad, x, eps, alpha, active = sample.args
    if misaligned:  # a storage offset of one element: the 16-byte vector loads are not allowed
        grad = torch.cat([torch.zeros(1), grad.flatten()])[1:].view_as(grad)
    assert_exact(F.pgd_step(delta, grad, x, eps, alpha, active), reference.pgd_step(delta, grad, x, eps, alpha, active))
    vec = "true" if cols % 4 == 0 and not misaligned else "false"
    assert emulated_device.kernels() == [f"pgd_step_kernel<float, float, {vec}>"]


@pytest.mark.parametrize("starts,threshold", [(1, None), (3, None), (3, 2), (5, 3), (8, None)])
@pytest.mark.parametrize("misaligned", [False, True])
def test_multigrad_step_vector_and_scalar_paths(emulated_device, starts, threshold, misaligned):
    sample = SPECS["multigrad_step"].make(3, 3072, "ties", torch.Generator().manual_seed(starts), DEV,
                                          starts=starts, threshold=threshold)
    grads, x, eps, alpha, th = sample.args
    if misaligned:
        grads = torch.cat([torch.zeros(1), grads.flatten()])[1:].view_as(grads)
    assert_exact(F.multigrad_step(grads, x, eps, alpha, th), reference.multigrad_step(grads, x, eps, alpha, th))
    vec = "true" if not misaligned else "false"
    assert emulated_device.kernels()[0].endswith(f"{vec}>")


# ----------------------------------------------------------------------------------------------- few SMs
def test_grid_stride_loops_with_few_sms(emulated_device):
    """With a 1-SM device the grid-stride kernels run a few blocks that loop over many tiles."""
    emulated_device.configure(sm_count=1)
    sample = SPECS["multigrad_step"].make(8, 3072, "random", torch.Generator().manual_seed(5), DEV)
    grads, x, eps, alpha, th = sample.args
    assert_exact(F.multigrad_step(grads, x, eps, alpha, th), reference.multigrad_step(grads, x, eps, alpha, th))
    assert "grid=16 " in emulated_device.launches()[0]


@pytest.mark.parametrize("dtype", FLOATS)
def test_uniform_init_grid_stride_with_few_sms(emulated_device, dtype):
    """Few SMs, so each thread loops over several Philox groups: the same stream as any launch shape."""
    emulated_device.configure(sm_count=1)  # 16 blocks of 256 threads for 5000 groups
    numel, seed, offset, eps = 20001, 77, 12, 0.125
    x = torch.full((numel,), 0.5, dtype=dtype)
    out = uniform_init_at(x, eps, seed, offset)
    assert "grid=16 " in emulated_device.launches()[0]
    assert_exact(out, expected_uniform(x, eps, seed, offset), f"uniform_init {dtype}")


# -------------------------------------------------------------------------------------- uniform_init, captured
def test_uniform_init_under_graph_capture_reads_the_device_state(emulated_device):
    """Captured (CUDA-graph) form: seed and offset come from device memory (+ the intra-graph offset), so each replay
    draws what an eager call with those values draws; a null pointer is refused."""
    from cuda_emu import emulator as emu

    lib = emulated_device.lib
    x = torch.rand(2, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    seed, offset = torch.tensor([987654321987], dtype=torch.int64), torch.tensor([40], dtype=torch.int64)
    out = emu._Guarded(x)
    emu._check(lib, "captured", lib.emu_uniform_init_captured(x.data_ptr(), out.t.data_ptr(), 0, x.numel(), 0.2,
                                                              seed.data_ptr(), offset.data_ptr(), 8))
    got = out.check("captured")
    assert torch.equal(got, uniform_init_at(x, 0.2, 987654321987, 48))
    assert lib.emu_uniform_init_captured(x.data_ptr(), out.t.data_ptr(), 0, x.numel(), 0.2, None,
                                         offset.data_ptr(), 0) != 0  # cudaErrorInvalidValue
