"""sora_step's CUDA kernel (csrc/cuda/sora_step.cu): its own Philox draw, so it is checked by what it must equal given
the draw rather than against the reference's torch.rand draw (tests/ops covers the CPU kernel, which equals that).

* The stream: sora_step's u is uniform_init's Philox word stream (philox.cuh), so from one generator state
  uniform_init(x = 0.5, ε = 0.5) gives u − 0.5 exactly and sora_step must give box(δ + (α·u)·sign(g), x) from that u,
  bit for bit (fastat.ops.reference.sora_step's arithmetic with the draw substituted). On a GPU also against the Python
  Philox at a chosen seed and offset (the emulator's generator stand-in cannot be set to one).
* Reproducibility per generator state, the generator advancing, the default generator; u uniform in [0, 1).
* Edge cases: zero/NaN/−0 gradients, α = 0, x at 0 and 1, NaN δ, fp16/bf16 state, gradients and α, non-contiguous
  and misaligned operands (scalar path), ragged lengths, 0-D and empty tensors; the binding's argument checks.
* GPU only: CUDA-graph capture (fresh draws per replay, a replay equals eager from the same state, α read on the
  device at replay time). Emulator only: a grid-stride launch on a 1-SM device.
"""

from __future__ import annotations

import pytest
import torch

from fastat.ops import reference

from ._dryrun import DEV, EMULATED, manual_seed, needs_gpu, synchronize
from ._philox import uniform_words
from .test_cuda_ops import _cuda_kernels_built  # noqa: F401  (fixture used here)
from .test_cuda_ops import F, _capture, _pick, assert_exact

pytestmark = pytest.mark.cuda

FLOATS = (torch.float32, torch.bfloat16, torch.float16)
ALPHA = 0.2


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(DEV).manual_seed(seed)


def expected(delta, grad, x, alpha, u):
    """reference.sora_step's arithmetic with the draw u (fp32, x's shape) substituted."""
    step = alpha.float() * u * torch.sign(grad.float())
    return reference.box(delta.float() + step, x.float()).contiguous().to(delta.dtype)


def draw_u(gen: torch.Generator, shape) -> torch.Tensor:
    """The u a random op draws from gen's current state (uniform_init's stream: u − 0.5 exactly at x = 0.5, ε = 0.5)."""
    half = torch.full(shape, 0.5, device=DEV)
    return F.uniform_init(half, 0.5, generator=gen) + 0.5


def sora_and_expected(delta, grad, x, alpha, seed=5):
    """(sora_step from generator state `seed`, what it must be given the u uniform_init draws from that state)."""
    gen = _gen(seed)
    state = gen.get_state()
    u = draw_u(gen, x.shape)
    gen.set_state(state)
    return F.sora_step(delta, grad, x, alpha, generator=gen), expected(delta, grad, x, alpha, u)


def _inputs(shape, dtype=torch.float32, grad_dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    x.view(-1)[:2] = torch.tensor([0.0, 1.0])[: x.numel()]
    d = (torch.rand(shape, generator=g) * 2 - 1) * 0.15
    grad = torch.randn(shape, generator=g)
    grad[torch.rand(shape, generator=g) < 0.1] = 0
    return d.to(dtype).to(DEV), grad.to(grad_dtype).to(DEV), x.to(dtype).to(DEV)


# ------------------------------------------------------------------------------------------------------ the stream


@pytest.mark.parametrize("numel", _pick([1, 5, 4096, 10003, 3 * 3072 * 64], [1, 5, 4096, 10003]))
@pytest.mark.parametrize("dtype,grad_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float16),
                                              (torch.float16, torch.bfloat16)])
def test_sora_step_is_the_step_on_uniform_inits_stream(numel, dtype, grad_dtype, poisoned_allocations):
    d, g, x = _inputs((numel,), dtype, grad_dtype, seed=numel)
    out, want = sora_and_expected(d, g, x, torch.tensor(ALPHA, device=DEV))
    assert_exact(out, want, f"numel={numel} {dtype} {grad_dtype}")


@needs_gpu
@pytest.mark.parametrize("dtype", FLOATS)
def test_sora_step_is_philox_at_a_chosen_state(dtype):
    """u = (word e % 4 of Philox(counter=(offset/4, e/4), key=seed)) >> 8, times 2^-24 (the Python Philox)."""
    numel, seed, offset = 20001, 0x1234_5678_9ABC_DEF0, 40
    d, g, x = _inputs((numel,), dtype, seed=1)
    u = torch.tensor([w >> 8 for w in uniform_words(seed, offset, numel)], dtype=torch.float32) * 2.0**-24
    gen = torch.Generator(DEV)
    gen.manual_seed(seed)
    gen.set_offset(offset)
    alpha = torch.tensor(ALPHA, device=DEV)
    assert_exact(F.sora_step(d, g, x, alpha, generator=gen), expected(d, g, x, alpha, u.to(DEV)), f"{dtype}")
    assert gen.get_offset() == offset + 4  # kSoraStepPhiloxIncrement


def test_sora_step_reproducible_and_the_generator_advances():
    d, g, x = _inputs((64, 3, 8, 8))
    alpha = torch.tensor(ALPHA, device=DEV)
    a = F.sora_step(d, g, x, alpha, generator=_gen(7))
    assert torch.equal(a, F.sora_step(d, g, x, alpha, generator=_gen(7)))
    assert not torch.equal(a, F.sora_step(d, g, x, alpha, generator=_gen(8)))
    gen = _gen(7)
    first, second = F.sora_step(d, g, x, alpha, generator=gen), F.sora_step(d, g, x, alpha, generator=gen)
    assert torch.equal(first, a) and not torch.equal(first, second)
    manual_seed(3)
    b = F.sora_step(d, g, x, alpha)  # the default generator of x's device
    manual_seed(3)
    assert torch.equal(b, F.sora_step(d, g, x, alpha))
    # SORA draws η with uniform_init and then u from one generator: the two calls take different numbers
    gen = _gen(9)
    half = torch.full((4096,), 0.5, device=DEV)
    eta_u = F.uniform_init(half, 0.5, generator=gen) + 0.5
    step_u = F.sora_step(torch.zeros_like(half), torch.ones_like(half), half, torch.tensor(1.0, device=DEV),
                         generator=gen)
    assert not torch.equal(eta_u, step_u)
    assert abs(torch.corrcoef(torch.stack([eta_u, step_u]))[0, 1].item()) < 0.1


def test_sora_step_scale_is_uniform():
    """At x = 0.5 with δ = 0 and g > 0 the result is α·u: uniform on [0, 1), nothing repeated."""
    n = _pick(1 << 22, 1 << 16)
    half = torch.full((n,), 0.5, device=DEV)
    alpha = torch.tensor(0.25, device=DEV)  # a power of two: u = out / α exactly
    u = (F.sora_step(torch.zeros_like(half), torch.ones_like(half), half, alpha, generator=_gen(0)) / 0.25).double()
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 5 / (12 * n) ** 0.5
    assert abs(u.var().item() - 1 / 12) < 0.005
    counts = torch.histc(u.float(), bins=16, min=0, max=1)
    assert ((counts - n / 16).abs() / (n / 16) ** 0.5).max() < 6
    assert (u[1:] != u[:-1]).float().mean() > 0.999


# ------------------------------------------------------------------------------------------------------ edge cases


def test_sora_step_edge_values():
    """sign(0) = sign(−0) = sign(NaN) = 0 (δ only re-projected), the box at x = 0 and 1, NaN δ propagates, α = 0."""
    x = torch.tensor([0.0, 1.0, 0.5, 0.5, 0.0, 1.0, 0.5, 0.25, 0.5], device=DEV)
    d = torch.tensor([-0.1, 0.1, 0.05, -0.05, 0.1, -0.1, float("nan"), 0.2, 0.6], device=DEV)
    g = torch.tensor([-1.0, 1.0, 0.0, float("nan"), 1.0, -1.0, 1.0, -0.0, float("inf")], device=DEV)
    box = reference.box(d, x)
    out, want = sora_and_expected(d, g, x, torch.tensor(0.3, device=DEV))
    assert_exact(out, want)
    assert out[0] == 0 and out[1] == 0 and out[8] == 0.5  # the box at 0, 1 and 1 - x
    assert torch.equal(out[2:4], box[2:4]) and out[7] == box[7] and out[6].isnan()
    assert_exact(F.sora_step(d, g, x, torch.tensor(0.0, device=DEV), generator=_gen(1)), box)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sora_step_low_precision_alpha_widens_exactly(dtype):
    d, g, x = _inputs((7, 3, 5, 5), seed=2)
    alpha = torch.tensor(ALPHA, device=DEV).to(dtype)
    out, want = sora_and_expected(d, g, x, alpha)
    assert_exact(out, want, f"alpha {dtype}")
    assert_exact(out, sora_and_expected(d, g, x, alpha.float())[0])


def test_sora_step_layouts_and_storage_offsets():
    """channels_last, strided and misaligned (scalar path) operands give what contiguous ones give: u follows the
    logical order and the result is contiguous."""
    d, g, x = _inputs((5, 3, 9, 7), torch.float16, torch.bfloat16, seed=3)
    alpha = torch.tensor(ALPHA, device=DEV)
    want = F.sora_step(d, g, x, alpha, generator=_gen(4))
    cl = torch.channels_last

    def shifted(t):
        flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=DEV)
        flat[1:].view(t.shape).copy_(t)
        return flat[1:].view(t.shape)

    wide = torch.empty(g.shape[:-1] + (2 * g.shape[-1],), dtype=g.dtype, device=DEV)[..., ::2]
    wide.copy_(g)  # g's values, every other element of a wider buffer
    for args in [(d.contiguous(memory_format=cl), wide, x.contiguous(memory_format=cl)),
                 (shifted(d), shifted(g), shifted(x)), (d, shifted(g), x)]:
        out = F.sora_step(*args, alpha, generator=_gen(4))
        assert out.is_contiguous()
        assert_exact(out, want)


def test_sora_step_empty_and_0d():
    alpha = torch.tensor(ALPHA, device=DEV)
    for shape in ((0,), (0, 3, 4, 4), (5, 0)):
        t = torch.zeros(shape, device=DEV)
        gen = _gen(1)
        before = gen.get_state()
        assert F.sora_step(t, t, t, alpha, generator=gen).shape == shape
        assert torch.equal(gen.get_state(), before)  # nothing drawn
    d, g, x = (torch.tensor(v, device=DEV) for v in (0.05, -2.0, 0.5))
    out, want = sora_and_expected(d, g, x, alpha)
    assert out.shape == ()
    assert_exact(out, want)


def test_sora_step_binding_checks():
    """torch.ops.fastat.sora_step called directly checks its arguments (checks.h) before anything runs."""
    d, g, x = _inputs((2, 3, 4, 4))
    alpha = torch.tensor(ALPHA, device=DEV)
    with pytest.raises(ValueError, match="^fastat.sora_step: .*'alpha'"):
        F.sora_step(d, g, x, alpha[None])
    with pytest.raises(TypeError, match="^fastat.sora_step: .*'alpha'"):
        F.sora_step(d, g, x, alpha.double())
    with pytest.raises(ValueError, match="^fastat.sora_step: .*'grad'"):
        F.sora_step(d, g[:1], x, alpha)
    with pytest.raises(TypeError, match="^fastat.sora_step: .*'x'"):
        F.sora_step(d, g, x.half(), alpha)
    if not EMULATED:
        with pytest.raises(ValueError, match="^fastat.sora_step: .*'alpha'"):
            F.sora_step(d, g, x, alpha.cpu())


def test_sora_step_opcheck():
    d, g, x = _inputs((4, 3, 8, 8), torch.bfloat16, torch.float32)
    torch.library.opcheck(F.sora_step, (d, g, x, torch.tensor(ALPHA, device=DEV)), dict(generator=_gen(0)),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


# --------------------------------------------------------------------------------------------------- CUDA graphs


@needs_gpu
def test_sora_step_in_a_cuda_graph():
    """Replays draw fresh numbers, a replay draws what eager draws from the same state, and α is read on the device
    at replay time (SORA's α changes between steps without a re-capture)."""
    d, g, x = _inputs((8, 3, 32, 32))
    alpha = torch.tensor(ALPHA, device=DEV)
    result = torch.empty_like(x)
    graph = _capture(lambda: result.copy_(F.sora_step(d, g, x, alpha)))
    draws = []
    for _ in range(2):
        graph.replay()
        synchronize()
        draws.append(result.clone())
    assert not torch.equal(draws[0], draws[1])
    torch.cuda.manual_seed(11)
    eager = F.sora_step(d, g, x, alpha)
    torch.cuda.manual_seed(11)
    result.fill_(float("nan"))
    graph.replay()
    synchronize()
    assert_exact(result, eager)
    alpha.fill_(0.0)
    graph.replay()
    synchronize()
    assert_exact(result, reference.box(d, x))


# ------------------------------------------------------------------------------------------------ emulator only


@pytest.mark.parametrize("dtype", FLOATS)
def test_sora_step_grid_stride_with_few_sms(emulated_device, dtype):
    """A 1-SM device: 16 blocks loop over 5001 Philox groups, the last one ragged; the same stream as any launch
    shape, on the vector path (aligned operands) and on the scalar one (an operand one element off)."""
    emulated_device.configure(sm_count=1)
    d, g, x = _inputs((20004,), dtype, seed=6)
    alpha = torch.tensor(ALPHA, device=DEV)
    for vec, args in ((True, (d[:-1], g[:-1], x[:-1])), (False, (d[:-1], g[1:], x[:-1]))):
        emulated_device.launches()
        out, want = sora_and_expected(*args, alpha)
        launched = [k for k in emulated_device.launches() if k.startswith("sora_step_kernel")]
        assert len(launched) == 1 and launched[0].endswith(f"{str(vec).lower()}> grid=16 block=256 smem=0 cluster=1")
        assert_exact(out, want, f"{dtype} vec={vec}")
