"""The batched PGD engine: (sample, restart) runs stream through a fixed-size pool of rows.

Each row is one run of PGD: its own clean input, δ, label, step count t and a done flag. One iteration forwards the
whole pool; a row *finishes* at that forward when it has taken all its steps or (with early stopping) is misclassified,
and its final CE and correctness are recorded from that forward (δ never changes afterwards, so they equal what a
separate final forward would give). Every other row takes a `fastat.ops.pgd_step` (``active`` masks the finished
ones). Every ``compact_every`` iterations the pool is compacted: finished rows leave, new runs from the queue take
their place, so early stopping saves compute instead of freezing rows. Once the queue is empty the pool shrinks to the
smallest bucket size (8, 12, 16, 24, 32, 48, ...) that holds the active rows, padded with inert rows, so the model sees
few distinct batch shapes (cuDNN plans, CUDA-graph captures per bucket). In eval mode rows are independent, so this
equals running the restarts one after another (`fastat.eval.pgd`'s "plain" implementation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ._common import logits_of
from ._starts import StartBank

FIELDS = ("x", "d", "y", "idx", "r", "t", "done", "loss", "correct")


def bucket(n: int, capacity: int) -> int:
    """Smallest size in {8, 12, 16, 24, 32, 48, ...} that is >= n, capped at ``capacity``."""
    size = 8
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return min(size, capacity)


@dataclass
class Settings:
    eps: float
    alpha: float
    steps: int
    restarts: int
    early_stop: bool
    precision: str
    capacity: int
    compact_every: int


class BatchedPGD:
    """Runs every (sample, restart) pair of ``bank`` and fills ``loss``/``correct`` (N, R) and ``clean`` (N,)."""

    def __init__(self, model: nn.Module, bank: StartBank, cfg: Settings, progress=None):
        self.model, self.bank, self.cfg, self.progress = model, bank, cfg, progress
        n, dev = bank.n, bank.device
        self.loss = torch.zeros(n, cfg.restarts, device=dev)
        self.correct = torch.zeros(n, cfg.restarts, dtype=torch.bool, device=dev)
        self.clean = torch.zeros(n, dtype=torch.bool, device=dev)
        self.cursor = (0, 0, 0)  # (block, restart, offset in block) of the next run to admit
        self.micro = cfg.capacity  # rows per forward; halved on out-of-memory
        self.forward_rows = 0
        self.admitted = 0  # runs admitted so far

    # ------------------------------------------------------------------------------------------------ queue

    def _queue_empty(self) -> bool:
        return self.cursor[0] >= self.bank.num_blocks

    def _admit(self, m: int) -> list[dict[str, Tensor]]:
        groups = []
        while m > 0 and not self._queue_empty():
            k, r, o = self.cursor
            xb, yb = self.bank.block(k)
            first = k * self.bank.block_size
            if r == 0 and o == 0:
                with torch.no_grad():
                    self.clean[first:first + len(yb)] = logits_of(self.model, xb, self.cfg.precision).argmax(1) == yb
            take = min(m, len(yb) - o)
            self.admitted += take
            d0 = self.bank.block_start(r, k)[o:o + take]
            groups.append(self._rows(xb[o:o + take], d0, yb[o:o + take],
                                     torch.arange(first + o, first + o + take, device=xb.device), r))
            m -= take
            o += take
            if o == len(yb):
                o, r = 0, r + 1
                if r == self.cfg.restarts:
                    r, k = 0, k + 1
            self.cursor = (k, r, o)
        return groups

    def _rows(self, x: Tensor, d: Tensor, y: Tensor, idx: Tensor, r: int, done: bool = False) -> dict[str, Tensor]:
        b, dev = x.shape[0], x.device
        return {"x": x, "d": d, "y": y, "idx": idx, "r": torch.full((b,), r, dtype=torch.int64, device=dev),
                "t": torch.full((b,), self.cfg.steps if done else 0, dtype=torch.int64, device=dev),
                "done": torch.full((b,), done, dtype=torch.bool, device=dev),
                "loss": torch.zeros(b, device=dev), "correct": torch.zeros(b, dtype=torch.bool, device=dev)}

    # ------------------------------------------------------------------------------------------------ pool upkeep

    def _compact(self, pool: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
        groups = []
        if pool is not None:
            real = pool["done"] & (pool["idx"] >= 0)
            fin = real.nonzero().squeeze(1)
            if fin.numel():
                self.loss[pool["idx"][fin], pool["r"][fin]] = pool["loss"][fin]
                self.correct[pool["idx"][fin], pool["r"][fin]] = pool["correct"][fin]
                if self.progress is not None:
                    self.progress.update(fin.numel())
            if fin.numel() == 0:
                return pool  # nothing finished: the pool is full (or already at its bucket size) as it is
            keep = (~pool["done"]).nonzero().squeeze(1)
            if keep.numel():
                groups.append({f: pool[f][keep] for f in FIELDS})
        n_keep = sum(g["x"].shape[0] for g in groups)
        groups += self._admit(self.cfg.capacity - n_keep)
        n = sum(g["x"].shape[0] for g in groups)
        if n == 0:
            return None
        if self._queue_empty():
            fill = bucket(n, self.cfg.capacity) - n
            if fill > 0:  # inert rows (done, idx −1) pad the pool to its bucket size
                x0 = groups[0]["x"]
                z = torch.zeros((fill,) + tuple(x0.shape[1:]), dtype=x0.dtype, device=x0.device)
                groups.append(self._rows(z, z.clone(), torch.zeros(fill, dtype=torch.int64, device=x0.device),
                                         torch.full((fill,), -1, dtype=torch.int64, device=x0.device), 0, done=True))
        return {f: torch.cat([g[f] for g in groups]) for f in FIELDS}

    # ------------------------------------------------------------------------------------------------ iteration

    def _step(self, pool: dict[str, Tensor], sl: slice) -> None:
        cfg = self.cfg
        x, d, y = pool["x"][sl], pool["d"][sl], pool["y"][sl]
        xa = (x + d).requires_grad_(True)
        with torch.enable_grad():
            logits = logits_of(self.model, xa, cfg.precision)
            loss = F.cross_entropy(logits, y, reduction="none")
            correct = logits.argmax(1) == y
            done = pool["done"][sl]
            finish = ~done & (pool["t"][sl] >= cfg.steps)
            if cfg.early_stop:
                finish |= ~done & ~correct
            grad = torch.autograd.grad(loss.sum(), xa)[0] if cfg.steps > 0 else None
        pool["loss"][sl] = torch.where(finish, loss.detach(), pool["loss"][sl])
        pool["correct"][sl] = torch.where(finish, correct, pool["correct"][sl])
        active = ~(done | finish)
        pool["done"][sl] = ~active
        if grad is not None:
            pool["d"][sl] = ops.pgd_step(d, grad, x, cfg.eps, cfg.alpha, active)
        pool["t"][sl] += active.long()

    def _iterate(self, pool: dict[str, Tensor]) -> None:
        size, start = pool["x"].shape[0], 0
        while start < size:
            stop = min(size, start + self.micro)
            try:
                self._step(pool, slice(start, stop))
            except torch.cuda.OutOfMemoryError:  # the same class as torch.OutOfMemoryError (torch >= 2.5)
                if self.micro <= 8:
                    raise
                self.micro //= 2  # nothing was written for this slice yet: retry it smaller
                torch.cuda.empty_cache()
                continue
            self.forward_rows += stop - start
            start = stop

    def run(self) -> None:
        pool, it = None, 0
        deadline = -1  # every row now in the pool has finished after this iteration (steps + 1 forwards per row)
        while True:
            if pool is None or it % self.cfg.compact_every == 0 or it > deadline:
                admitted = self.admitted
                pool = self._compact(pool)
                if pool is None:
                    return
                if self.admitted > admitted:
                    deadline = it + self.cfg.steps
            self._iterate(pool)
            it += 1
