"""uniform_init draws Philox4x32-10 (csrc/cuda/uniform_init.cu; the Python stream is tests/gpu/_philox.py): the
reference implementation against Random123's known answers, then every element of the kernel's output against it,
at a chosen generator state, in each storage dtype, boxed. Its generator protocol, bounds, uniformity and graph
replays are also in test_cuda_ops.py and test_cuda_edge_cases.py; few-SM grid-stride launches in
test_emulated_launch_paths.py."""

from __future__ import annotations

import pytest
import torch

from ._dryrun import DEV
from ._philox import expected_uniform, philox4x32_10, uniform_init_at
from .test_cuda_ops import _cuda_kernels_built  # noqa: F401  (fixture used here)
from .test_cuda_ops import assert_exact

pytestmark = pytest.mark.cuda

FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def test_philox_reference_known_answers():
    """The Python Philox reproduces Random123's known-answer vectors (kat_vectors, philox4x32_10)."""
    assert philox4x32_10((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert philox4x32_10((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == (
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


@pytest.mark.parametrize("numel", [1, 5, 4096, 10001])
def test_uniform_init_is_philox(numel):
    """Element e = (word e % 4 of Philox(counter=(offset/4, e/4), key=seed)) >> 8, scaled to [-eps, eps) (the box
    does not bind at x = 0.5): equal to the Python stream's, the same again, and another for another offset."""
    seed, offset, eps = 0x1234_5678_9ABC_DEF0, 8 * 4, 0.125
    x = torch.full((numel,), 0.5, device=DEV)
    out = uniform_init_at(x, eps, seed, offset)
    assert_exact(out, expected_uniform(x, eps, seed, offset), f"numel={numel}")
    assert torch.equal(out, uniform_init_at(x, eps, seed, offset))  # deterministic
    assert not torch.equal(out, uniform_init_at(x, eps, seed, offset + 4))  # the offset moves the stream


@pytest.mark.parametrize("dtype", FLOATS)
def test_uniform_init_storage_dtypes_round_the_fp32_value_once(dtype):
    """fp16/bf16 outputs are the fp32 values rounded once; 20001 elements: a ragged last Philox block."""
    numel, seed, offset, eps = 20001, 77, 12, 0.125
    x = torch.full((numel,), 0.5, dtype=dtype, device=DEV)
    assert_exact(uniform_init_at(x, eps, seed, offset), expected_uniform(x, eps, seed, offset), f"{dtype}")


@pytest.mark.parametrize("dtype", FLOATS)
def test_uniform_init_bounds_and_box(dtype):
    """The perturbation, boxed so that x + d stays in [0, 1] (x at 0 and 1 included), bit for bit the boxed stream."""
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x.view(-1)[:2] = torch.tensor([0.0, 1.0])
    x = x.to(dtype).to(DEV)
    out = uniform_init_at(x, 0.3, 42, 0)
    assert_exact(out, expected_uniform(x, 0.3, 42, 0), f"{dtype}")
    d, xf = out.float(), x.float()
    assert out.dtype == dtype and not out.isnan().any()
    assert (xf + d).min() >= 0 and (xf + d).max() <= 1
    assert d.abs().max() <= 0.3 * (1 + torch.finfo(dtype).eps)
    assert d.std() > 0.05  # not a constant
