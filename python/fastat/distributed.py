"""Multi-process helpers for ``torchrun``: one process per GPU (or several CPU processes with gloo).

``torchrun --nproc_per_node=N -m fastat train|eval ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; `init` starts the
process group from them (NCCL for CUDA devices, gloo for the CPU; ``FASTAT_DIST_BACKEND`` overrides, e.g. gloo to run
several ranks on one GPU in a test; ``FASTAT_DIST_TIMEOUT`` is how many seconds a collective may wait, default 3600).
Without those variables everything here is a no-op on a world of one process,
so callers never branch on "distributed or not".

Collectives used by fastat are few and explicit: sums of metric counters (`all_reduce_sum`), row exchanges of
per-example state (`all_gather_rows`), broadcasts from rank 0 (`broadcast_`, `broadcast_object`) and `barrier`.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Dist", "all_gather_object", "all_gather_rows", "all_reduce_sum", "backend", "barrier", "broadcast_",
           "broadcast_object", "current", "env_rank", "env_world_size", "init", "local_cuda_index", "shard_range",
           "shutdown"]

BACKENDS = ("nccl", "gloo")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank, world size and local rank (GPU index on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when unset)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def env_rank() -> int:
    """RANK as torchrun sets it (0 when unset or malformed: one process)."""
    try:
        return max(int(os.environ.get("RANK", "0")), 0)
    except ValueError:
        return 0


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"fastat.distributed: WORLD_SIZE > 1 but {name} is not set; launch with torchrun")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"fastat.distributed: environment variable {name} must be an int, got {value!r}") from None


DEFAULT_TIMEOUT_S = 3600


def _timeout_seconds() -> float:
    """How long a collective may wait for the slowest rank: ``FASTAT_DIST_TIMEOUT`` seconds, default one hour (NCCL's
    own default, 10 minutes, is shorter than the spread between ranks of a sharded AutoAttack run)."""
    value = os.environ.get("FASTAT_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"fastat.distributed: FASTAT_DIST_TIMEOUT must be a number of seconds, got {value!r}") \
            from None
    if not seconds > 0:
        raise ValueError(f"fastat.distributed: FASTAT_DIST_TIMEOUT must be > 0, got {value!r}")
    return seconds


def current() -> Dist:
    """The initialised process group's rank and size, or a world of one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return Dist(dist.get_rank(), dist.get_world_size(), local)
    return Dist()


def init(device_type: str, backend: str | None = None) -> Dist:
    """Join the torchrun job described by the environment (idempotent); a world of one when WORLD_SIZE ≤ 1.

    Args:
        device_type: "cuda" or "cpu": picks the default backend (NCCL or gloo).
        backend: "nccl" or "gloo"; default ``FASTAT_DIST_BACKEND`` or the device's.
    """
    import torch.distributed as dist

    if env_world_size() <= 1:
        return current()
    if not dist.is_available():
        raise RuntimeError("fastat.distributed: this torch build has no torch.distributed")
    if dist.is_initialized():
        return current()
    backend = backend or os.environ.get("FASTAT_DIST_BACKEND") or ("nccl" if device_type == "cuda" else "gloo")
    if backend not in BACKENDS:
        raise ValueError(f"fastat.distributed: argument 'backend' must be one of {BACKENDS}, got {backend!r}")
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    kw: dict[str, Any] = {"timeout": datetime.timedelta(seconds=_timeout_seconds())}
    if backend == "nccl":
        torch.cuda.set_device(local)
        kw["device_id"] = torch.device("cuda", local)
    dist.init_process_group(backend=backend, rank=rank, world_size=world, **kw)
    return Dist(rank, world, local)


def backend() -> str | None:
    """The process group's backend ("nccl", "gloo"), or None without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return str(dist.get_backend())
    return None


def local_cuda_index() -> int:
    """The GPU of this torchrun process: LOCAL_RANK. More processes on the node (LOCAL_WORLD_SIZE) than visible GPUs
    is a ValueError (checked before joining: NCCL's init would fail on cuda:LOCAL_RANK with a bare CUDA error),
    unless the backend is gloo (``FASTAT_DIST_BACKEND=gloo``), whose ranks may share GPUs: LOCAL_RANK mod count."""
    local = _env_int("LOCAL_RANK")
    count = torch.cuda.device_count()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", local + 1))
    if per_node > count:
        if (backend() or os.environ.get("FASTAT_DIST_BACKEND")) != "gloo":
            raise ValueError(f"LOCAL_RANK {local} but only {count} CUDA devices for the {per_node} processes on "
                             f"this node: start at most {count} per node (--nproc_per_node={count}), or set "
                             "FASTAT_DIST_BACKEND=gloo to let ranks share GPUs")
        return local % count
    return local


def shutdown() -> None:
    """Leave the process group if one was started."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_range(n: int, rank: int, world: int, align: int = 1) -> tuple[int, int]:
    """[lo, hi) of rank's contiguous share of n items, boundaries on multiples of ``align`` (the last rank ends at
    n). Shares differ by at most one ``align`` block; a rank may get an empty range when n is small."""
    blocks = -(-n // align)
    lo_b = blocks * rank // world
    hi_b = blocks * (rank + 1) // world
    return min(lo_b * align, n), min(hi_b * align, n)


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over ranks in place (returned for chaining); unchanged in a world of one."""
    import torch.distributed as dist

    if current().enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_(t: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``t`` on every rank with rank ``src``'s values (in place). A host tensor under NCCL goes through the
    GPU in chunks of dim-0 rows of about 256 MB (it need not fit there whole)."""
    import torch.distributed as dist

    if not current().enabled:
        return t
    if t.device.type != "cuda" and backend() == "nccl":  # NCCL moves GPU memory only
        dev = torch.device("cuda", torch.cuda.current_device())
        rows = t.unsqueeze(0) if t.dim() == 0 else t  # a view: writing its rows writes t
        step = max(1, (256 << 20) // max(1, rows[0].numel() * t.element_size())) if rows.shape[0] else 1
        for lo in range(0, rows.shape[0], step):
            part = rows[lo:lo + step].to(dev)
            dist.broadcast(part, src)
            rows[lo:lo + step].copy_(part)
        return t
    dist.broadcast(t, src)
    return t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank."""
    import torch.distributed as dist

    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order."""
    import torch.distributed as dist

    d = current()
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def all_gather_rows(t: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate every rank's rows (dim 0) in rank order. Ranks may hold different row counts (each is padded to
    the largest for the collective and trimmed after); pass ``sizes`` (every rank's count) when known, which saves
    a collective and a host sync. CPU tensors work under NCCL too (gathered on the GPU)."""
    import torch.distributed as dist

    d = current()
    if not d.enabled:
        return t
    if t.dtype == torch.bool:  # not every backend reduces/gathers bool
        return all_gather_rows(t.to(torch.uint8), sizes).bool()
    if t.device.type != "cuda" and backend() == "nccl":  # NCCL gathers GPU memory only
        return all_gather_rows(t.to(torch.device("cuda", torch.cuda.current_device())), sizes).to(t.device)
    if sizes is None:
        n = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
        counts = [torch.zeros_like(n) for _ in range(d.world_size)]
        dist.all_gather(counts, n)
        sizes = [int(c) for c in counts]
    elif len(sizes) != d.world_size or sizes[d.rank] != t.shape[0]:
        raise ValueError(f"fastat.distributed.all_gather_rows: argument 'sizes' {sizes} does not match the world "
                         f"size {d.world_size} and this rank's {t.shape[0]} rows")
    most = max(sizes)
    padded = t.new_zeros((most, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(d.world_size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def barrier() -> None:
    import torch.distributed as dist

    if current().enabled:
        dist.barrier()
