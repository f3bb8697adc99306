"""Data-parallel training under torchrun: joining the process group, and keeping what each rank holds a replica of —
per-example method state, the method's learnable scalars, BatchNorm statistics, the random streams — as one process
would have it. `join_processes` picks this rank's device and joins the group (a world of one without torchrun);
`Replicas` is what the trainer asks of the other ranks during training (with one process every call is a no-op).

The scheme (``torchrun --nproc_per_node=N -m fastat train ...``, detected from WORLD_SIZE): DDP, one GPU per rank
(NCCL; gloo on the CPU). ``batch_size`` is the *global* batch: each rank takes a contiguous share of every batch one
process would draw, so the same config trains with the same hyper-parameters on 1 or N GPUs. The attack runs on each
rank's share with the plain module (input gradients only, no DDP hooks); the training forward/backward goes through
DDP, exactly one of each per step (a GradAlign regulariser's double-backprop graph on the plain module joins the same
backward). The loss is scaled so the averaged gradient is the global-batch mean even when the last batch splits
unevenly (`Replicas.share`). Per-example state (ATAS δ/v, APART ω) is replicated: after each step the ranks exchange
the rows they updated (exact one-process semantics; fine for data sets that fit on one GPU); it is allocated before
training (`Method.prepare`) and rank 0's draw, the one-process draw, is broadcast then and after each
`on_epoch_start` (ATAS resets). BatchNorm statistics stay per rank (no SyncBN, which breaks GradAlign's double
backward) and DDP broadcasts rank 0's buffers at each forward; before evaluating, rank 0's buffers are broadcast
again, then the evaluation is sharded and gathered (`fastat.eval.pgd_robustness`). Rank 0 writes metrics, plots and
checkpoints (which carry every rank's RNG state); ``out`` must be on a file system every rank sees. Per-rank random
streams differ (seed + 1000003·rank; rank 0 is the one-process stream). Not combined with ``cuda_graph``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import distributed as dist_
from .config import ConfigError

__all__ = ["Replicas", "join_processes"]


def join_processes(device: torch.device, requested: str | None) -> tuple[dist_.Dist, torch.device]:
    """(the process group, this rank's device): a world of one without torchrun (WORLD_SIZE <= 1); under torchrun
    the GPU of this rank's LOCAL_RANK (``requested``, the configured device, must not name an index). ConfigError
    (one line) for a torchrun environment that lacks or garbles RANK/LOCAL_RANK, or too few GPUs."""
    if dist_.env_world_size() <= 1:
        return dist_.Dist(), device
    if device.type != "cuda":
        return _init_group("cpu"), device
    if device.index is not None:
        raise ConfigError(f"argument 'device' is {requested!r}: under torchrun each rank uses the GPU of its "
                          "LOCAL_RANK; pass --device cuda (or set CUDA_VISIBLE_DEVICES)")
    try:
        index = dist_.local_cuda_index()  # before joining the group
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return _init_group("cuda"), torch.device("cuda", index)


def _init_group(device_type: str) -> dist_.Dist:
    try:
        return dist_.init(device_type)
    except ValueError as exc:  # RANK/LOCAL_RANK missing or malformed, a bad FASTAT_DIST_TIMEOUT
        raise ConfigError(str(exc).splitlines()[0]) from None


class Replicas:
    """The trainer's view of the other ranks (``dist``: this process's place in the group; ``method``: the training
    method, whose per-example state and scalars are replicated)."""

    def __init__(self, dist: dist_.Dist, method: Any, seed: int) -> None:
        self.dist, self.method, self.seed = dist, method, seed

    @property
    def enabled(self) -> bool:
        return self.dist.enabled

    def seed_rank_stream(self, offset: int = 0) -> None:
        """This rank's own random stream (ranks >= 1; rank 0 keeps the one-process stream)."""
        torch.manual_seed(self.seed + 1000003 * self.dist.rank + offset)

    def share(self, rows: int, info: Any) -> float:
        """rows · world / global batch: 1 when the ranks split the batch evenly (always in one process). DDP averages
        the ranks' gradients; weighting each rank's batch-mean loss by its share makes that the global-batch mean."""
        g = getattr(info, "global_batch", None)
        return 1.0 if not self.dist.enabled or not g else rows * self.dist.world_size / g

    def average_method_grads(self) -> None:
        """The method's learnable scalars (APART) live outside the DDP module: average their gradients here, in one
        all-reduce. Parameters without a gradient are left alone, as the optimiser skips them (every rank runs the
        same code path, so the same ones have gradients everywhere)."""
        params = [p for p in self.method.parameters() if p.grad is not None]
        if not self.dist.enabled or not params:
            return
        flat = dist_.all_reduce_sum(torch.cat([p.grad.reshape(-1) for p in params]))
        flat.div_(self.dist.world_size)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.view_as(p.grad))

    @torch.no_grad()
    def exchange_example_rows(self, info: Any) -> None:
        """Every rank updated the per-example state rows of its share of the batch: gather them all, so each
        replica holds what one process would after this step (indices are unique within a global batch)."""
        buffers = self.method.example_buffers()
        if not self.dist.enabled or not buffers:
            return
        g, w = info.global_batch, self.dist.world_size  # each rank's share is known: no count exchange, no sync
        sizes = None if g is None else [hi - lo for lo, hi in (dist_.shard_range(g, r, w) for r in range(w))]
        index = dist_.all_gather_rows(info.index, sizes)
        for buf in buffers:  # (host state, ATAS state_device='cpu': the buffers are on the host, the indices not)
            buf[index.to(buf.device)] = dist_.all_gather_rows(buf[info.index.to(buf.device)].contiguous(), sizes)

    @torch.no_grad()
    def broadcast_example_state(self) -> None:
        """Rank 0's per-example state everywhere (after it was allocated or re-drawn on each rank with its own
        random stream)."""
        if self.dist.enabled:
            for buf in self.method.example_buffers():
                dist_.broadcast_(buf)

    @torch.no_grad()
    def broadcast_buffers(self, *modules: nn.Module | None) -> None:
        """Rank 0's BatchNorm statistics everywhere (they drift per rank during the steps), so every rank evaluates
        the same model."""
        if self.dist.enabled:
            for module in modules:
                if module is not None:
                    for b in module.buffers():
                        dist_.broadcast_(b)

    def sum_over_ranks(self, sums: dict[str, torch.Tensor], count: int) -> int:
        """Sum each rank's epoch sums (in place, one all-reduce) and sample counts; returns the total count."""
        if not self.dist.enabled:
            return count
        keys = sorted(sums)
        device = next(iter(sums.values())).device if sums else torch.device("cpu")
        packed = dist_.all_reduce_sum(torch.stack([sums[k] for k in keys] + [torch.tensor(float(count),
                                                                                          device=device)]))
        for k, v in zip(keys, packed[:-1]):
            sums[k].copy_(v)
        return int(packed[-1])

    def prepare_example_state(self, loader: Any, channels: int, device: torch.device) -> None:
        """Allocate the per-example state before training (not on the first perturb) and broadcast rank 0's draw —
        the one a single process makes there, as nothing in between uses the global RNG — before any rank reads it."""
        if not self.dist.enabled:
            return
        from ..batch import BatchInfo

        h, w = loader.image_size
        self.method.prepare(BatchInfo(index=torch.zeros(0, dtype=torch.int64, device=device),
                                      num_examples=loader.num_examples, pad=loader.pad),
                            torch.zeros(0, channels, h, w, device=device))
        self.broadcast_example_state()
