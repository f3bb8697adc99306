"""Random PGD starts that do not depend on how samples are batched.

The start of sample i for restart r is row i − k·BLOCK of ``fastat.ops.uniform_init(x[k·BLOCK:(k+1)·BLOCK], ε,
generator=G(seed, r, k))`` with k = ⌊i / BLOCK⌋ and G a generator on x's device seeded from (seed, r, k). Any
implementation that asks for the rows it needs gets identical starts, whatever its chunking or restart batching.
A bank over a slice of the samples that starts on a block boundary (one rank's shard under torchrun) passes its
global block offset as ``first_block``, so its starts are those of the same samples in the whole set.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import ops

BLOCK = 256
_MASK = (1 << 64) - 1


def start_seed(seed: int, restart: int, block: int) -> int:
    """A 63-bit generator seed mixed from (seed, restart, block) (splitmix64-style)."""
    h = 0x9E3779B97F4A7C15
    for v in (seed, restart, block):
        h = ((h ^ (v & _MASK)) * 0xBF58476D1CE4E5B9) & _MASK
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & _MASK
        h ^= h >> 29
    return h & ((1 << 63) - 1)


class StartBank:
    """Hands out clean inputs and random starts on ``device`` for any sample range and restart.

    Args:
        x: all N clean inputs (any device; blocks are moved to ``device`` as float32 when needed).
        y: their labels.
        eps: ε of the uniform start.
        seed: the evaluation seed.
        first_block: global index of the bank's first block: its sample i is sample first_block·BLOCK + i of the
            whole evaluation set (0 unless the bank holds one shard of it).
    """

    def __init__(self, x: Tensor, y: Tensor, eps: float, seed: int, device: torch.device, first_block: int = 0):
        self.x, self.y, self.eps, self.seed, self.device = x, y, float(eps), int(seed), device
        self.first_block = int(first_block)
        self.n = int(x.shape[0])
        self.block_size = BLOCK
        self.num_blocks = -(-self.n // self.block_size)
        self._xblock: tuple[int, Tensor, Tensor] | None = None
        self._start: tuple[int, int, Tensor] | None = None

    def block(self, k: int) -> tuple[Tensor, Tensor]:
        """(x, y) of block k on the device (x float32)."""
        if self._xblock is None or self._xblock[0] != k:
            sl = slice(k * self.block_size, min((k + 1) * self.block_size, self.n))
            xb = self.x[sl].to(self.device, torch.float32, non_blocking=True).contiguous()
            self._xblock = (k, xb, self.y[sl].to(self.device, torch.int64, non_blocking=True))
        return self._xblock[1], self._xblock[2]

    def block_start(self, restart: int, k: int) -> Tensor:
        """δ₀ of every sample of (local) block k for restart r."""
        if self._start is None or self._start[:2] != (restart, k):
            xb, _ = self.block(k)
            gen = torch.Generator(device=self.device).manual_seed(start_seed(self.seed, restart, self.first_block + k))
            self._start = (restart, k, ops.uniform_init(xb, self.eps, generator=gen))
        return self._start[2]

    def starts(self, restart: int, lo: int, hi: int) -> Tensor:
        """δ₀ of samples [lo, hi) for restart r."""
        parts, s = [], self.block_size
        for k in range(lo // s, -(-hi // s)):
            a, b = max(lo, k * s) - k * s, min(hi, (k + 1) * s) - k * s
            parts.append(self.block_start(restart, k)[a:b])
        return parts[0] if len(parts) == 1 else torch.cat(parts)
