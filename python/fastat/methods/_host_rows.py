"""Per-example state kept in host memory and served to the accelerator a batch of rows at a time.

ATAS keeps δ for every training example in the padded frame: CIFAR-10 at 40×40×3 is 960 MB in fp32, Tiny-ImageNet
at 72×72×3 is 6.2 GB, ImageNet down-sampled to 32×32 as the official code does is 7.9 GB in fp16 (ecosystem.md D).
`HostRows` lets that state live in ordinary (pageable) host memory instead, and moves only the rows of each batch:

* `fetch`: the rows of ``index`` are gathered on the host into a pinned staging tensor and copied to the device
  asynchronously (stream-ordered before the kernels that read them).
* `store`: the updated device rows are copied back into another pinned staging tensor on a side stream (after the
  kernels that wrote them, and overlapping the rest of the training step on the main stream), an event is recorded
  there, and the scatter into the host buffers is deferred until the state is next needed (`flush`: the next
  `fetch`, a checkpoint, a reset), so neither the GPU nor the host waits for the copy.

Traffic per step is 2 × rows × row bytes over PCIe/NVLink-C2C, plus one device→host copy of the batch's indices
(a sync: steps with host state cannot be captured in a CUDA graph). On a CPU device (or any other than CUDA) the
copies are plain and immediate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["HostPlacement", "HostRows", "fill_uniform_on"]


class HostPlacement:
    """The ``state_device`` option of the methods with per-example buffers that may live in host memory (ATAS,
    FGSM-PGI): None keeps them beside the images, "cpu" in host memory (rows served by `HostRows`)."""

    state_device: str | None

    @staticmethod
    def check_state_device(owner: str, value: object) -> str | None:
        """``value`` if it is None or "cpu", else a one-line ValueError naming the argument."""
        if value not in (None, "cpu"):
            from .base import fail

            fail(owner, ValueError, f"argument 'state_device' must be None (the images' device) or 'cpu' (host "
                                    f"memory), got {value!r}")
        return value

    @property
    def host_state(self) -> bool:
        return self.state_device is not None

    def _home(self, device: torch.device) -> torch.device:
        """Where the state lives when the kernels run on ``device``: there, or on the host (``state_device``)."""
        return torch.device(self.state_device) if self.host_state else device


class HostRows:
    """Gather/scatter rows of host buffers for one device, with at most one deferred write-back in flight."""

    def __init__(self) -> None:
        self._pending: tuple[list[Tensor], Tensor, list[Tensor], torch.cuda.Event] | None = None
        self._streams: dict[torch.device, torch.cuda.Stream] = {}  # the write-back's side stream, per device

    @staticmethod
    def host_index(index: Tensor) -> Tensor:
        """``index`` as int64 on the host (a device→host copy, hence a sync, when it lives on an accelerator)."""
        return index.to(device="cpu", dtype=torch.int64, copy=True)  # a copy: the write-back in flight keeps it

    def fetch(self, buffers: Sequence[Tensor], index: Tensor, device: torch.device) -> list[Tensor]:
        """Copies of ``buf[index]`` for each host buffer, on ``device`` (new tensors the caller may update)."""
        self.flush()
        if device.type != "cuda":  # the host itself (or a device without pinned-memory streams: plain copies)
            return [buf.index_select(0, index).to(device) for buf in buffers]
        out = []
        for buf in buffers:
            staged = torch.empty((index.numel(), *buf.shape[1:]), dtype=buf.dtype, pin_memory=True)
            torch.index_select(buf, 0, index, out=staged)
            # the caching host allocator keeps `staged` alive until this copy has run, even once it is dropped here
            out.append(staged.to(device, non_blocking=True))
        return out

    def store(self, buffers: Sequence[Tensor], index: Tensor, rows: Sequence[Tensor]) -> None:
        """Write ``rows`` (on the device ``fetch`` served) back into ``buf[index]``; deferred on an accelerator."""
        self.flush()
        if not rows or rows[0].device.type != "cuda":
            for buf, r in zip(buffers, rows):
                buf.index_copy_(0, index, r.to(device=buf.device, dtype=buf.dtype))
            return
        device = rows[0].device
        side = self._streams.get(device)
        if side is None:
            side = self._streams[device] = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))  # after the kernels that wrote the rows
        staged = []
        with torch.cuda.stream(side):
            for buf, r in zip(buffers, rows):
                s = torch.empty(r.shape, dtype=buf.dtype, pin_memory=True)
                s.copy_(r, non_blocking=True)
                r.record_stream(side)  # the caching allocator must not hand r's memory out before this copy ran
                staged.append(s)
            event = torch.cuda.Event()
            event.record(side)
        self._pending = (list(buffers), index, staged, event)

    def flush(self) -> None:
        """Finish the deferred write-back, if any (waits for its copy, then scatters on the host)."""
        if self._pending is None:
            return
        buffers, index, staged, event = self._pending
        self._pending = None
        event.synchronize()
        for buf, s in zip(buffers, staged):
            buf.index_copy_(0, index, s)

    @property
    def pending(self) -> bool:
        return self._pending is not None


def fill_uniform_on(buf: Tensor, device: torch.device, low: float, high: float,
                    generator: torch.Generator | None, *, chunk_bytes: int = 64 << 20) -> Tensor:
    """``buf`` (host) ← U(low, high) drawn in fp32 on the accelerator ``device`` with ``generator`` (one of that
    device, or None for torch's global one) and rounded to ``buf``'s dtype, in chunks of rows of about ``chunk_bytes``
    (the buffer need not fit on the device). The sequence differs from one draw of the whole buffer on the device."""
    n = buf.shape[0]
    step = max(1, chunk_bytes // max(1, buf[0].numel() * 4)) if n else 1
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        draw = torch.empty((hi - lo, *buf.shape[1:]), dtype=torch.float32, device=device)
        buf[lo:hi].copy_(draw.uniform_(low, high, generator=generator))
    return buf
