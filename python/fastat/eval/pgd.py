"""PGD-k-r robustness evaluation, as the fast-AT reference codes run it (methods.md §8), batched for speed.

Per (sample, restart): δ₀ = Π_box(U(−ε, ε)) (`fastat.ops.uniform_init`, drawn per `_starts`), then ``steps`` times:
forward; with ``early_stop`` a sample that is misclassified stops moving (WONG/NF/ZG; GA runs all steps); otherwise
δ ← Π_box(Π_ε(δ + α·sign(∇_δ ℓ))) (`fastat.ops.pgd_step`). Its final CE ℓ_r and correctness are recorded.

Accounting across restarts (both are always computed):
- "max_loss" (official): keep the restart with the highest final CE, ties to the later restart (``ℓ_r >= ℓ_max``);
  the sample is robust if that restart is classified correctly. A restart that fools the model with a lower CE than
  another restart that does not is *not* counted.
- "any": the sample is broken if any restart fools the model (robust iff every restart is classified correctly).
Neither requires clean correctness, as in the official code (a clean-wrong sample is almost always wrong under PGD).

Gradients: ∇ of the *per-sample-summed* CE with respect to the input only (torch.autograd.grad; no weight gradients,
parameters untouched). The reference codes differentiate the batch-mean CE, which scales row i's gradient by 1/B;
sign() is scale-invariant, and the sum makes each row's gradient independent of how rows are batched, so chunking,
restart batching and compaction cannot change a result. The model runs in eval mode (its modes are restored after).

Implementations (identical per-sample flags for the same seed):
- "batched": (sample, restart) runs stream through one pool of rows that is compacted every few iterations, so
  early-stopped runs stop costing compute (`_pgd_batched`);
- "plain": chunks of samples, restarts one after another, every sample forwarded at every step (a torchattacks-style
  loop with the reference codes' early-stop mask) — the baseline the batched engine is measured against.

Distributed (``torchrun``; ``distributed=None`` shards whenever a process group of more than one rank is up): the
call is then a collective that every rank must make (a rank-0-only evaluation passes ``distributed=False``). Every
rank passes the same full (x, y) and the same plain module with identical weights (no DDP wrapper needed; a DDP or
DataParallel wrapper is unwrapped; keeping the weights and BN buffers in sync is the caller's job — the trainer
broadcasts its buffers before evaluating). Rank k evaluates the contiguous shard ``fastat.distributed.shard_range(N,
k, world, align=BLOCK)``: shards start on `_starts` block boundaries and the shard's start bank is told its global
block offset, so every sample gets the random starts it gets in one process and its per-sample results are those of a
single-process run (bit-identical wherever the model's per-row outputs do not depend on batch composition, the same
condition as for chunking above). The per-sample tensors are gathered in the original order and the accuracies
recomputed from them, so every rank returns the same full `PGDResult`; ``seconds`` is the slowest rank's,
``forward_rows`` the sum over ranks, ``settings["batch_size"]`` the largest rank's rows per forward and
``settings["world_size"]`` the number of ranks that shared the work. A rank with an empty shard (fewer blocks than
ranks) still joins the collectives. Errors in the arguments are raised on every rank before any collective; ranks
that disagree on N or the labels all raise ValueError.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed as fdist
from .. import ops
from . import _starts
from ._common import (PRECISIONS, check_choice, check_inputs, check_int, check_positive, eval_mode, input_gradient,
                      logits_of, model_device)
from ._pgd_batched import BatchedPGD, Settings
from ._starts import StartBank

ACCOUNTINGS = ("max_loss", "any")
IMPLS = ("batched", "plain")
MAX_AUTO_ROWS = 4096
CPU_AUTO_ROWS = 256

__all__ = ["ACCOUNTINGS", "IMPLS", "PGDResult", "aggregate_restarts", "pgd_robustness"]


@dataclass
class PGDResult:
    """Outcome of `pgd_robustness`. Accuracies are fractions in [0, 1]; per-sample tensors are on the CPU.

    ``robust_acc``/``robust`` follow ``accounting``; both accountings are always present. ``restart_loss`` and
    ``restart_correct`` (N, R) hold each restart's final CE and correctness; ``forward_rows`` counts rows forwarded
    by attack iterations (the work done); ``seconds`` is the wall time, synchronised. Distributed: the same full
    result on every rank, with ``seconds`` the slowest rank's and ``forward_rows`` summed over ranks.
    """

    clean_acc: float
    robust_acc: float
    robust: Tensor
    accounting: str
    robust_acc_max_loss: float
    robust_acc_any: float
    robust_max_loss: Tensor
    robust_any: Tensor
    clean: Tensor
    restart_loss: Tensor
    restart_correct: Tensor
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    forward_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no per-sample tensors)."""
        return {"clean_acc": self.clean_acc, "robust_acc": self.robust_acc, "accounting": self.accounting,
                "robust_acc_max_loss": self.robust_acc_max_loss, "robust_acc_any": self.robust_acc_any,
                "n": int(self.clean.numel()), "seconds": self.seconds, "forward_rows": self.forward_rows,
                **self.settings}


def aggregate_restarts(loss: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample robust flags (max_loss, any) from per-restart final CE ``loss`` and ``correct`` of shape (N, R)."""
    best_loss, best_correct = loss[:, 0], correct[:, 0]
    for r in range(1, loss.shape[1]):
        take = loss[:, r] >= best_loss  # ties go to the later restart (WONG utils.py)
        best_loss = torch.where(take, loss[:, r], best_loss)
        best_correct = torch.where(take, correct[:, r], best_correct)
    return best_correct, correct.all(dim=1)


def pgd_robustness(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int = 50,
                   restarts: int = 10, accounting: str = "max_loss", early_stop: bool = True, precision: str = "fp32",
                   batch_size: int | None = None, seed: int = 0, impl: str = "batched", *,
                   device: str | torch.device | None = None, compact_every: int = 2,
                   progress: bool = False, distributed: bool | None = None) -> PGDResult:
    """PGD-``steps``-``restarts`` robust accuracy of ``model`` on (x, y) in the ℓ∞ ball of radius ε.

    Args:
        model: maps (B, C, H, W) inputs in [0, 1] to logits (normalisation inside); run in eval mode. Under a
            process group every rank must hold identical weights (a DDP wrapper is unwrapped).
        x, y: N inputs in [0, 1] (any device; moved in blocks) and their int labels; the same full set on every
            rank when distributed.
        eps, alpha: ε and the step α, in [0, 1] pixel units (the references use α = 2/255 or ε/4).
        steps, restarts: PGD iterations per restart and number of random restarts.
        accounting: which accounting fills ``robust_acc``/``robust`` ("max_loss" official, or "any").
        early_stop: freeze a sample once misclassified (WONG/NF/ZG); False runs all steps (GA).
        precision: "fp32", or "bf16" (autocast forward; δ, loss and gradients fp32).
        batch_size: rows (sample × restart runs) per forward; None sizes it from free memory on CUDA (at most
            4096) and uses 256 on the CPU.
        seed: seeds the random starts (see `_starts`), identical across ``impl`` and batch sizes.
        impl: "batched" (pool with compaction) or "plain" (restarts one after another).
        device: where to run (default: the model's device).
        compact_every: iterations between pool compactions (batched only).
        progress: show a tqdm progress bar (rank 0 only when distributed).
        distributed: shard the samples over the torch.distributed process group and gather the results (see the
            module docstring). None: when a group of more than one rank is initialised; False: evaluate every sample
            on this rank; True: require an initialised process group.
    """
    fn = "pgd_robustness"
    check_inputs(fn, x, y)
    check_positive(fn, "eps", eps)
    check_positive(fn, "alpha", alpha)
    check_int(fn, "steps", steps, 0)
    check_int(fn, "restarts", restarts, 1)
    check_int(fn, "compact_every", compact_every, 1)
    check_choice(fn, "accounting", accounting, ACCOUNTINGS)
    check_choice(fn, "precision", precision, PRECISIONS)
    check_choice(fn, "impl", impl, IMPLS)
    if batch_size is not None:
        check_int(fn, "batch_size", batch_size, 1)
    world = resolve_world(fn, distributed)
    model = plain_module(model)
    dev = torch.device(device) if device is not None else model_device(model)
    n = int(x.shape[0])
    lo, hi = 0, n
    if world.enabled:
        check_same_samples(fn, x, y)
        lo, hi = fdist.shard_range(n, world.rank, world.world_size, align=_starts.BLOCK)
    bank = StartBank(x[lo:hi], y[lo:hi], eps, seed, dev, first_block=lo // _starts.BLOCK)
    tag = f", rank 0 of {world.world_size}" if world.enabled else ""
    bar = _progress_bar(progress and world.is_main, (hi - lo) * restarts, f"PGD-{steps}-{restarts} ({impl}{tag})")
    with eval_mode(model):
        _sync(dev)
        t0 = time.perf_counter()
        rows = batch_size if batch_size is not None else _auto_rows(model, bank, precision)
        cfg = Settings(float(eps), float(alpha), steps, restarts, bool(early_stop), precision, rows, compact_every)
        if impl == "batched":
            engine = BatchedPGD(model, bank, cfg, bar)
            engine.run()
            loss, correct, clean, work = engine.loss, engine.correct, engine.clean, engine.forward_rows
        else:
            loss, correct, clean, work = _plain(model, bank, cfg, bar)
        _sync(dev)
        seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    loss, correct, clean = loss.cpu(), correct.cpu(), clean.cpu()
    if world.enabled:
        loss, correct, clean, (seconds, work, rows) = _gather_results(loss, correct, clean, seconds, work,
                                                                      rows if hi > lo else None)
    robust_ml, robust_any = aggregate_restarts(loss, correct)
    acc = lambda t: float(t.float().mean())  # noqa: E731
    settings = {"eps": float(eps), "alpha": float(alpha), "steps": steps, "restarts": restarts,
                "early_stop": bool(early_stop), "precision": precision, "impl": impl, "seed": seed,
                "batch_size": rows, "world_size": world.world_size}
    primary = robust_ml if accounting == "max_loss" else robust_any
    return PGDResult(clean_acc=acc(clean), robust_acc=acc(primary), robust=primary, accounting=accounting,
                     robust_acc_max_loss=acc(robust_ml), robust_acc_any=acc(robust_any), robust_max_loss=robust_ml,
                     robust_any=robust_any, clean=clean, restart_loss=loss, restart_correct=correct,
                     seconds=seconds, settings=settings, forward_rows=work)


def _plain(model: nn.Module, bank: StartBank, cfg: Settings, bar) -> tuple[Tensor, Tensor, Tensor, int]:
    """Chunks of samples; restarts one after another; every sample of the chunk forwarded at every step."""
    n, dev = bank.n, bank.device
    loss = torch.zeros(n, cfg.restarts, device=dev)
    correct = torch.zeros(n, cfg.restarts, dtype=torch.bool, device=dev)
    clean = torch.zeros(n, dtype=torch.bool, device=dev)
    work = 0
    for lo in range(0, n, cfg.capacity):
        hi = min(n, lo + cfg.capacity)
        xc = bank.x[lo:hi].to(dev, torch.float32).contiguous()
        yc = bank.y[lo:hi].to(dev, torch.int64)
        with torch.no_grad():
            clean[lo:hi] = logits_of(model, xc, cfg.precision).argmax(1) == yc
        for r in range(cfg.restarts):
            d = bank.starts(r, lo, hi)
            for _ in range(cfg.steps):
                grad, logits, _ = input_gradient(model, xc + d, yc, cfg.precision)
                work += hi - lo
                active = None
                if cfg.early_stop:
                    active = logits.argmax(1) == yc
                    if not bool(active.any()):
                        break
                d = ops.pgd_step(d, grad, xc, cfg.eps, cfg.alpha, active)
            with torch.no_grad():
                logits = logits_of(model, xc + d, cfg.precision)
            work += hi - lo
            loss[lo:hi, r] = F.cross_entropy(logits, yc, reduction="none")
            correct[lo:hi, r] = logits.argmax(1) == yc
            if bar is not None:
                bar.update(hi - lo)
    return loss, correct, clean, work


def _auto_rows(model: nn.Module, bank: StartBank, precision: str) -> int:
    """Rows per forward that fit: measured from one probe forward/backward on CUDA; a fixed 256 on the CPU."""
    if bank.device.type != "cuda" or bank.n == 0:
        return CPU_AUTO_ROWS
    probe = min(64, bank.n)
    xb, yb = bank.block(0)
    torch.cuda.synchronize(bank.device)
    base = torch.cuda.memory_allocated(bank.device)
    torch.cuda.reset_peak_memory_stats(bank.device)
    input_gradient(model, xb[:probe], yb[:probe], precision)
    torch.cuda.synchronize(bank.device)
    per_row = max(1, (torch.cuda.max_memory_allocated(bank.device) - base) // probe)
    free, _ = torch.cuda.mem_get_info(bank.device)
    free += torch.cuda.memory_reserved(bank.device) - torch.cuda.memory_allocated(bank.device)
    # half the free memory: the pool's own tensors (x, δ, gathers at compaction) need room too
    rows = int(0.5 * free // (per_row + 4 * xb[0].numel() * 4))
    return max(8, min(rows, MAX_AUTO_ROWS))


# ------------------------------------------------------------------------ distributed helpers (autoattack.py too)

def resolve_world(fn: str, distributed: bool | None) -> fdist.Dist:
    """The process group to shard over: ``fastat.distributed.current()``, or a world of one (see ``distributed``)."""
    import torch.distributed as dist

    if distributed is not None and not isinstance(distributed, bool):
        raise ValueError(f"{fn}: argument 'distributed' must be None, True or False, got {distributed!r}")
    if distributed is False:
        return fdist.Dist()
    if distributed and not (dist.is_available() and dist.is_initialized()):
        raise ValueError(f"{fn}: argument 'distributed' is True but no torch.distributed process group is "
                         f"initialised (launch with torchrun and call fastat.distributed.init first)")
    return fdist.current()


def plain_module(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (evaluation needs no gradient sync)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def check_same_samples(fn: str, x: Tensor, y: Tensor) -> None:
    """Every rank must pass the same N samples (checked: N and the label sum); raises on every rank otherwise."""
    mine = torch.tensor([[x.shape[0], int(y.long().sum())]], dtype=torch.int64)
    every = fdist.all_gather_rows(mine)
    if not bool((every == mine).all()):
        raise ValueError(f"{fn}: arguments 'x' and 'y' must be the same full set on every rank when distributed; "
                         f"(N, label sum) per rank: {every.tolist()}")


def _gather_results(loss: Tensor, correct: Tensor, clean: Tensor, seconds: float, work: int,
                    rows: int | None) -> tuple[Tensor, Tensor, Tensor, tuple[float, int, int | None]]:
    """Every rank's shard of (loss, correct, clean) in rank order, and (max seconds, summed work, max rows)."""
    loss = fdist.all_gather_rows(loss)
    flags = fdist.all_gather_rows(torch.cat([clean[:, None], correct], 1))
    stats = fdist.all_gather_rows(torch.tensor([[seconds, work, -1 if rows is None else rows]], dtype=torch.float64))
    used = [int(r) for r in stats[:, 2].tolist() if r >= 0]
    return loss, flags[:, 1:], flags[:, 0], (float(stats[:, 0].max()), int(stats[:, 1].sum()), max(used))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _progress_bar(enabled: bool, total: int, desc: str):
    from .._progress import interactive, progress_bar

    if not (enabled and interactive()):  # no bar in a log file
        return None
    return progress_bar(total=total, desc=desc, unit="run", leave=False)
