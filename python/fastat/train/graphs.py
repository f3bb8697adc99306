"""Whole-step CUDA-graph training (``TrainConfig.cuda_graph``): the trainer's per-epoch sums and the capture/replay of
its step.

`EpochSums` holds the per-epoch device sums (loss, accuracy, perturbation, method statistics) that a step adds into;
they persist across epochs (zeroed in place), because a captured step adds into the very tensors it saw at capture.

`GraphedStep` runs a step function from a CUDA graph: after `WARMUP` eager steps (`warm_up`, on a side stream: lazy
state, cuDNN autotuning), one capture per epoch on static copies of the batch — re-done at every epoch start and after any
checkpoint load (`reset`), because per-epoch method settings (warm-up, q after a roll-back) and tensors replaced by a
load are baked into a capture — and a replay for every full batch with the batch copied into the static inputs. A
capture that fails warns once and reports False, and the trainer runs its steps eagerly from then on (``failed``
says why).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["EpochSums", "GraphedStep"]


class EpochSums:
    """Per-epoch sums kept on the device; ``add`` never syncs, so a captured step can add into them."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.capturing = False    # inside a CUDA-graph capture:
        self.missed: set[str] = set()  # sums first seen there (a capture would re-zero them at every replay)

    def add(self, key: str, value: torch.Tensor) -> None:
        acc = self.sums.get(key)
        if acc is None:
            if self.capturing:  # `GraphedStep` allocates it outside the capture and captures again
                self.missed.add(key)
                return
            acc = self.sums[key] = torch.zeros((), device=self.device)
        acc.add_(value.detach().float())

    def zero_(self) -> None:
        for acc in self.sums.values():
            acc.zero_()

    def allocate(self, keys: set[str]) -> None:
        for key in keys:
            self.sums[key] = torch.zeros((), device=self.device)


class GraphedStep:
    """Run ``step(x, y, info)`` from a CUDA graph, captured per epoch (see the module docstring)."""

    WARMUP = 3

    def __init__(self, step: Callable[[Any, Any, Any], None], sums: EpochSums, device: torch.device,
                 before_capture: Callable[[], None]) -> None:
        self.step, self.sums, self.device = step, sums, device
        self.before_capture = before_capture  # e.g. zero the optimizers' gradients (set_to_none) before a capture
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple | None = None
        self.epoch = 0
        self.pool = None
        self.replays = 0
        self.failed: str | None = None  # why a capture failed (the trainer then trains eagerly)

    def reset(self) -> None:
        """Drop the capture (a checkpoint load replaced the tensors it holds): the next step captures again."""
        self.graph = self.static = None

    def warm_up(self, x, y, info) -> None:
        """One eager step on a side stream (before the first capture: lazy state, cuDNN autotuning)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.step(x, y, info)
        torch.cuda.current_stream(self.device).wait_stream(side)

    def replay(self, x, y, info, epoch: int) -> bool:
        """This batch's step from the graph (capturing it first if this epoch has none yet); False if the capture
        failed (the caller then runs the step eagerly)."""
        if self.graph is None or self.epoch != epoch:
            try:
                self._capture(x, y, info, epoch)
            except Exception as exc:  # noqa: BLE001  (any capture failure: report once, train on eagerly)
                self.reset()
                self.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                warnings.warn(f"fastat: CUDA-graph capture failed ({self.failed}); training eagerly",
                              RuntimeWarning, stacklevel=3)
                torch.cuda.synchronize(self.device)
                return False
        else:
            sx, sy, sinfo = self.static
            sx.copy_(x)
            sy.copy_(y)
            for name in ("index", "offsets", "flips"):
                src = getattr(info, name)
                if src is not None:
                    getattr(sinfo, name).copy_(src)
        self.graph.replay()
        self.replays += 1
        return True

    def _capture(self, x, y, info, epoch: int) -> None:
        """Capture the step on static copies of this batch (twice if the first capture met epoch sums it had not
        seen before: they are allocated outside and the step captured again)."""
        self.reset()  # the previous capture's memory returns to the pool
        clone = lambda t: None if t is None else t.clone()  # noqa: E731
        static = (x.clone(), y.clone(), dataclasses.replace(info, index=clone(info.index),
                                                            offsets=clone(info.offsets), flips=clone(info.flips)))
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        self.before_capture()
        torch.cuda.synchronize(self.device)
        for _ in range(2):
            self.sums.missed = set()
            graph = torch.cuda.CUDAGraph()
            self.sums.capturing = True
            try:
                with torch.cuda.graph(graph, pool=self.pool):
                    self.step(*static)
            finally:
                self.sums.capturing = False
            if not self.sums.missed:
                break
            self.sums.allocate(self.sums.missed)  # nothing captured has run yet: no step is counted twice
            graph = None  # release the first capture before the second
        else:
            raise RuntimeError(f"epoch sums {sorted(self.sums.missed)} keep changing between captures")
        self.graph, self.static, self.epoch = graph, static, epoch
