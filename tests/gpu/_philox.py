"""uniform_init's random stream, known in Python: Philox4x32-10, the words and outputs uniform_init must give, and a
draw at a chosen generator state on either device (a GPU or the emulator).

csrc/cuda/uniform_init.cu's contract: element e takes 32-bit word e % 4 of the Philox block at counter (offset / 4,
e / 4) under key = seed, keeps its top 24 bits as u in [0, 1), and returns (2u - 1)·eps boxed into [-x, 1 - x]."""

from __future__ import annotations

import torch

from fastat.ops import reference

from ._dryrun import DEV, EMULATED, emulator, ops_under_test

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


def uniform_words(seed: int, offset: int, numel: int) -> list[int]:
    """The 32-bit Philox word of each of the first numel elements under the generator state (seed, offset)."""
    block, key = offset // 4, (seed & 0xFFFFFFFF, seed >> 32)
    words: list[int] = []
    for j in range((numel + 3) // 4):
        words += philox4x32_10((block & 0xFFFFFFFF, block >> 32, j & 0xFFFFFFFF, j >> 32), key)
    return words[:numel]


def expected_uniform(x: torch.Tensor, eps: float, seed: int, offset: int) -> torch.Tensor:
    """What uniform_init(x, eps) returns from the generator state (seed, offset), on x's device: for each element
    u = fmaf(word >> 8 · 2^-24, 2·eps, -eps) in fp32, boxed into [-x, 1 - x] (fastat.ops.reference.box), in x's dtype."""
    u24 = torch.tensor([w >> 8 for w in uniform_words(seed, offset, x.numel())], dtype=torch.float64) * 2.0**-24
    e = float(torch.tensor(eps, dtype=torch.float32))
    u = (u24 * (2 * e) - e).float()  # exact in fp64 (under 53 significant bits), then one rounding: fmaf's
    return reference.box(u.view(x.shape).to(x.device), x.float()).to(x.dtype)


def uniform_init_at(x: torch.Tensor, eps: float, seed: int, offset: int) -> torch.Tensor:
    """uniform_init(x, eps) drawn from the generator state (seed, offset), offset a multiple of 4.

    On a GPU through torch.ops.fastat with a CUDA generator set to that state (the binding reads it as the kernel's
    seed and offset). Under the emulator the binding's generator is a stand-in whose offsets are not CUDA's, so the
    launcher is called with them directly (tests/cuda_emu/capi.cpp)."""
    if EMULATED:
        from cuda_emu import emulator as emu

        return emu.uniform_init(emulator(), x, eps, seed, offset)
    gen = torch.Generator(DEV)
    gen.manual_seed(seed)
    gen.set_offset(offset)
    return ops_under_test().uniform_init(x, eps, generator=gen)
