"""`Trainer`: SGD adversarial training with any `fastat.methods` method, per-epoch evaluation, checkpoints, resume
and the catastrophic-overfitting monitor. `fit(**config)` is the one-call API.

Per step: x_adv = method.perturb(model, x, y, batch) (the model's passes inside it under autocast at
``attack_precision``, by default ``precision``; δ, the step and the attack loss stay fp32), loss = CE(model(x_adv).float(), y) (+ method.extra_loss), SGD (momentum 0.9, wd 5e-4) with a per-batch lr
schedule; fp16 uses a GradScaler. After each epoch: clean + PGD accuracy on the first ``eval_n`` test images
(PGD-20, α = ε/4, 1 restart), the CO check, metrics files and a checkpoint (model, optimiser, scheduler, method
state, RNG states of torch / CUDA / the loader, EMA, metrics, config) in ``checkpoint.pt``, copied to
``last_good.pt`` when the CO check passed and to ``best.pt`` when the PGD accuracy is the highest so far.

Several processes (``torchrun --nproc_per_node=N -m fastat train ...``, detected from WORLD_SIZE): data-parallel
training with DDP, one GPU per rank (NCCL; gloo on the CPU). ``batch_size`` is the *global* batch: each rank takes a
contiguous share of every batch one process would draw, so the same config trains with the same hyper-parameters on
1 or N GPUs. The attack runs on each rank's share with the plain module (input gradients only, no DDP hooks); the
training forward/backward goes through DDP, exactly one of each per step (a GradAlign regulariser's double-backprop
graph on the plain module joins the same backward). The loss is scaled so the averaged gradient is the global-batch
mean even when the last batch splits unevenly. Per-example state (ATAS δ/v, APART ω) is replicated: after each step
the ranks exchange the rows they updated (exact one-process semantics; fine for data sets that fit on one GPU); under
torchrun it is allocated before training (`Method.prepare`) and rank 0's draw, the one-process draw, is broadcast then
and after each `on_epoch_start` (ATAS resets). BatchNorm statistics
stay per rank (no SyncBN, which breaks GradAlign's double backward) and DDP broadcasts rank 0's buffers at each
forward; before evaluating, rank 0's buffers are broadcast again, then the evaluation is sharded and gathered
(`fastat.eval.pgd_robustness`). Rank 0 writes metrics, plots and checkpoints (which carry every rank's RNG state);
``out`` must be on a file system every rank sees. Per-rank random streams differ (seed + 1000003·rank; rank 0 is the
one-process stream). Not combined with ``cuda_graph``.

``cuda_graph=True`` (CUDA, bf16/fp32): after 3 eager warm-up steps the whole step (attack, loss, backward, SGD with a
device-tensor lr, EMA, epoch sums) is captured in a CUDA graph and replayed for every full batch; it is re-captured at
each epoch start and after any checkpoint load (per-epoch method settings are baked into a capture), the last smaller
batch runs eagerly, and a failed capture warns once and trains on eagerly (`graph_mode_failed` says why).

``compile="default"`` (or another `torch.compile` mode): the attacks' forwards and backwards and the training forward
and backward run through ``torch.compile(model)`` (under torchrun, the training forward through the compiled DDP
wrapper). GradAlign's regulariser (double backprop, which compiled graphs do not support: pytorch#91469), the
per-epoch evaluation, the CO check and the final evaluation stay eager. Not combined with ``cuda_graph``. Compiled
kernels are not bit-identical to eager ones, so a resumed run matches a straight one only within float noise.
"""

from __future__ import annotations

import copy
import inspect
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist_
from ..checkpoint import CheckpointError, copy_checkpoint, load_checkpoint, save_checkpoint
from ..eval._common import autocast
from .config import ConfigError, TrainConfig
from .monitor import COMonitor, WongCODetector, chance_level, divergence, strengthen
from .recipes import default_eps_warmup, default_lr, default_model
from .records import MetricsWriter, final_eval_table
from .schedules import make_scheduler

__all__ = ["Trainer", "fit"]

CKPT = "checkpoint.pt"
_DATASETS: dict[tuple, Any] = {}


def _cached_dataset(load, name: str, root: str | None, split: str, download: bool = False):
    """Datasets are read-only uint8 tensors: decode each (name, root, split) once per process (gz decoding costs
    seconds for Fashion-MNIST; tests and sweeps build many trainers)."""
    key = (name, root, split)
    if key not in _DATASETS:
        _DATASETS[key] = load(name, root, split, download=download)
    return _DATASETS[key]


GOOD = "last_good.pt"
BEST = "best.pt"  # the epoch with the highest PGD accuracy on the evaluation slice so far (early stopping, Rice et al.)


# Config keys a resumed run may change: they do not alter the training trajectory (output, progress, evaluation).
RESUME_FREE = frozenset({"out", "progress", "plot", "checkpoint", "eval_n", "eval_steps", "eval_restarts", "on_co",
                         "on_diverge",
                         "max_rollbacks", "final_eval", "final_n", "compile", "download"})
FINAL = "final_eval.json"
FINAL_STEPS, FINAL_RESTARTS = 50, 10
# TrainConfig defaults that changed: {field: (old, new, date)}, named when a resume is refused over them
CHANGED_DEFAULTS = {"lr_peak": (0.4, 0.5, "2026-12-01"), "lr_max": (0.2, "the model's and batch size's", "2026-12-07"),
                    "eps": (0.2, "the data set's", "2026-12-07")}
# what `_restore` reads from a checkpoint (`_read` checks them before any state is touched)
RESTORED = ("model", "optimizer", "scheduler", "method", "loader", "monitor", "scaler", "rng", "history", "epoch")


class Trainer:
    """Build everything from a `TrainConfig` (validated; bad input raises `ConfigError` before training)."""

    def __init__(self, config: TrainConfig | None = None, *, model: nn.Module | None = None, **kw: Any) -> None:
        from ..data import load_dataset, make_loader
        from ..methods import build_method
        from ..models import build_model

        if isinstance(model, str):  # a model name, as in TrainConfig(model=...)
            kw["model"], model = model, None
        cfg = config if config is not None else TrainConfig(**kw)
        cfg.validate()
        self.cfg = cfg
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dist = self._join_processes()
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)  # CUDA-graph capture, cuDNN and the evaluators use the current device
        try:
            train = _cached_dataset(load_dataset, cfg.dataset, cfg.data_root, "train", cfg.download)
            test = _cached_dataset(load_dataset, cfg.dataset, cfg.data_root, "test", cfg.download)
        except (FileNotFoundError, OSError, ValueError, ImportError) as exc:  # ImportError: torchvision missing
            raise ConfigError(f"cannot load dataset {cfg.dataset!r}: {str(exc).splitlines()[0]}") from None
        if cfg.subset and cfg.subset > len(train):
            raise ConfigError(f"argument 'subset' ({cfg.subset}) is larger than the training set ({len(train)})")
        n_train = cfg.subset or len(train)
        if cfg.batch_size > n_train:
            raise ConfigError(f"argument 'batch_size' ({cfg.batch_size}) is larger than the training set ({n_train})")
        if cfg.batch_size < self.dist.world_size:
            raise ConfigError(f"argument 'batch_size' ({cfg.batch_size}) must be >= the number of processes "
                              f"({self.dist.world_size}): it is the global batch, shared by the ranks")
        torch.manual_seed(cfg.seed)
        self.loader = make_loader(train, batch_size=cfg.batch_size, device=self.device, train=True, seed=cfg.seed,
                                  subset=cfg.subset, rank=self.dist.rank, world_size=self.dist.world_size,
                                  pad_mode=cfg.pad_mode, drop_last=cfg.drop_last)
        # method
        mkw = dict(cfg.method_kwargs)
        from ..methods import METHODS, _canonical
        cls = METHODS[_canonical(cfg.method)]
        if "epochs" in inspect.signature(cls.__init__).parameters:
            mkw.setdefault("epochs", cfg.epochs)
        try:
            self.method = build_method(cfg.method, eps=cfg.eps, **mkw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc).splitlines()[0]) from None
        # model
        self.model_name = cfg.model or default_model(self.device.type)
        self.model_config: dict[str, Any] | None = None
        if model is None:
            self.model_config = {"name": self.model_name, "in_channels": train.in_channels,
                                 "num_classes": train.num_classes, "input_size": list(train.input_size),
                                 "mean": None if train.mean is None else list(train.mean),
                                 "std": None if train.std is None else list(train.std), **cfg.model_kwargs}
            kwargs = dict(self.model_config)
            model = build_model(kwargs.pop("name"), **kwargs)
        self.model = model.to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.method.to(self.device)
        self.method.attach(self.model)  # before the optimisers: APART adopts the model's noise sites (α_b scalars)
        steps = cfg.epochs * len(self.loader)
        recipe = self._resolved_config(cfg.to_dict())  # what the recipe fills in where the config says None
        self.lr_max, self.eps_warmup = float(recipe["lr_max"]), float(recipe["eps_warmup"])
        self.warmup_steps = round(self.eps_warmup * len(self.loader))
        self._budget = 1.0  # this step's ε-warm-up scale (`budget_scale`)
        self.graph_mode = bool(cfg.cuda_graph)
        if self.graph_mode and self.device.type != "cuda":
            raise ConfigError("argument 'cuda_graph' needs a CUDA device (got device "
                              f"{self.device.type!r})")
        if self.graph_mode and self.dist.enabled:
            raise ConfigError("argument 'cuda_graph' is not supported with several processes (torchrun) yet")
        if self.graph_mode and self.method.host_state:
            raise ConfigError("argument 'cuda_graph' does not combine with per-example state in host memory "
                              "(state_device='cpu'): every step copies the batch's rows through the host")
        # what the attacks run (`attack_model`) and what the training forward runs (`train_model`): the model itself,
        # the DDP wrapper under torchrun, compiled with `compile`; all share `self.model`'s parameters and buffers
        self.attack_model: nn.Module = self._compiled(self.model)
        if cfg.compile is not None and getattr(self.method, "noise_modules", None):
            warnings.warn("APART's layer-wise noise arms one-shot forward hooks at its noise sites every step: the "
                          "compiled model breaks its graph there and recompiles until torch.compile's recompile "
                          "limit, then runs those parts eagerly, so --compile gains little for it (results are "
                          "unaffected)", stacklevel=2)
        self.train_model: nn.Module = self.attack_model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = self._compiled(DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None))
            if self.dist.rank:  # rank 0 keeps the one-process stream (model init may have drawn from it already)
                self._seed_rank_stream()
            # per-example state now, not on the first perturb, so rank 0's draw (the one a single process makes
            # there: nothing in between uses the global RNG) can be broadcast before any rank reads it
            from ..batch import BatchInfo

            c, (h, w) = int(train.images.shape[1]), self.loader.image_size
            self.method.prepare(BatchInfo(index=torch.zeros(0, dtype=torch.int64, device=self.device),
                                          num_examples=self.loader.num_examples, pad=self.loader.pad),
                                torch.zeros(0, c, h, w, device=self.device))
            self._broadcast_example_state()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self._lr(self.lr_max), momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, **self._sgd_kw())
        self.scheduler = make_scheduler(self.optimizer, cfg.lr_schedule, steps, peak=cfg.lr_peak,
                                        milestones=cfg.milestones)
        self.param_optimizer = self.param_scheduler = None
        if self.method.parameters():
            po = dict(getattr(self.method, "param_optimizer", {}) or {})
            self.param_optimizer = torch.optim.SGD(self.method.parameters(), lr=self._lr(po.get("lr_max", 5e-8)),
                                                   momentum=po.get("momentum", 0.9),
                                                   weight_decay=po.get("weight_decay", 0.0), **self._sgd_kw())
            self.param_scheduler = make_scheduler(self.param_optimizer, po.get("lr_schedule", "cyclic"), steps,
                                                  peak=0.5)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.ema = copy.deepcopy(self.model).eval() if cfg.ema else None
        if self.ema is not None:
            for p in self.ema.parameters():
                p.requires_grad_(False)
        self.test_set = test
        n_eval = min(cfg.eval_n, len(test))
        self.x_eval = test.images[:n_eval].float().div(255).to(self.device)
        self.y_eval = test.labels[:n_eval].long().to(self.device)
        n_co = min(cfg.co_batch, n_eval)
        self.monitor: COMonitor | WongCODetector = (
            COMonitor(self.x_eval[:n_co], self.y_eval[:n_co], cfg.eps, steps=cfg.co_steps, drop=cfg.co_drop)
            if cfg.co_check == "test" else WongCODetector(cfg.eps, steps=cfg.co_steps, drop=cfg.co_drop))
        self.chance = chance_level(self.y_eval)  # a constant predictor's accuracy on the evaluation slice
        self.stopped: str | None = None  # why training stopped early (a diverged model), else None
        self._first_batch: tuple[torch.Tensor, torch.Tensor] | None = None  # this epoch's, for the "wong" check
        self.out = Path(cfg.out) if cfg.out else None
        try:
            self.writer = MetricsWriter(self.out, plot=cfg.plot) if self.out and self.dist.is_main else None
        except OSError as exc:  # a file of that name, no permission, a read-only file system
            raise ConfigError(f"argument 'out' ({cfg.out!r}) cannot be used as the run folder: "
                              f"{exc.strerror or exc}") from None
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.rollbacks = 0
        self._acc: dict[str, torch.Tensor] = {}  # per-epoch device sums (persistent: a captured step adds into them)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_epoch = 0
        self._graph_static: tuple | None = None
        self._graph_pool = None
        self._capturing = False
        self.eager_steps = 0   # steps run eagerly / replayed from the captured graph (graph mode reports both)
        self.graph_replays = 0
        self.graph_mode_failed: str | None = None  # why a capture failed (graph mode then trains eagerly)
        self.final: dict[str, Any] | None = None  # `final_evaluation`'s report

    def _join_processes(self) -> dist_.Dist:
        """Under torchrun (WORLD_SIZE > 1): join the process group and take the GPU of this rank's LOCAL_RANK."""
        if dist_.env_world_size() <= 1:
            return dist_.Dist()
        if self.device.type == "cuda":
            if self.device.index is not None:
                raise ConfigError(f"argument 'device' is {self.cfg.device!r}: under torchrun each rank uses the GPU "
                                  "of its LOCAL_RANK; pass --device cuda (or set CUDA_VISIBLE_DEVICES)")
            try:
                index = dist_.local_cuda_index()  # before joining the group
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            d = _init_group("cuda")
            self.device = torch.device("cuda", index)
            return d
        return _init_group("cpu")

    def _compiled(self, module: nn.Module) -> nn.Module:
        """``torch.compile(module)`` with ``compile``'s mode, else the module. The wrapper shares the module's
        parameters; dynamo's guard on the input's ``requires_grad`` gives the attacks (input gradient only) their own
        graph."""
        return module if self.cfg.compile is None else torch.compile(module, mode=self.cfg.compile)

    def _lr(self, value: float) -> float | torch.Tensor:
        """CUDA-graph mode keeps each lr in a device tensor that the captured optimizer step reads."""
        return torch.tensor(float(value), device=self.device) if self.graph_mode else value

    def _sgd_kw(self) -> dict[str, Any]:
        # the fused SGD kernel takes a tensor lr on the device; the default foreach path would read it on the host
        return {"fused": True} if self.graph_mode else {}

    # ------------------------------------------------------------------------------------------------ steps
    def _autocast(self, precision: str | None = None):
        return autocast(self.device, precision or self.cfg.precision, cache_enabled=not self.graph_mode)

    def _add(self, key: str, value: torch.Tensor) -> None:
        acc = self._acc.get(key)
        if acc is None:
            if self._capturing:  # a sum first seen inside a capture would be re-zeroed by every replay: `_capture`
                self._missed_in_capture.add(key)  # allocates it outside and captures again
                return
            acc = self._acc[key] = torch.zeros((), device=self.device)
        acc.add_(value.detach().float())

    def _step(self, x: torch.Tensor, y: torch.Tensor, info: Any) -> None:
        """One training step: attack, loss, backward, optimizer step(s), EMA and the epoch sums. Never syncs with the
        host, so in CUDA-graph mode the whole of it is captured once per epoch and replayed."""
        cfg, model = self.cfg, self.model
        with self._autocast(cfg.attack_precision), self.method.scaled_budget(self._budget):
            x_adv = self.method.perturb(self.attack_model, x, y, info)
        with self._autocast():
            logits = self.train_model(x_adv)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            with self.method.scaled_budget(self._budget):  # eager: double backprop (pytorch#91469)
                reg = self.method.extra_loss(model, x, y, x_adv, info)
            total = loss if reg is None else loss + reg.float()
        share = self._share(y.shape[0], info)
        if share != 1.0:  # DDP averages the ranks' gradients: weight each rank's mean by its share of the batch
            total = total * share
        self.optimizer.zero_grad(set_to_none=True)
        if self.param_optimizer is not None:
            self.param_optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.dist.enabled:
            self._average_method_grads()
        self.scaler.step(self.optimizer)
        if self.param_optimizer is not None:
            self.scaler.step(self.param_optimizer)
        self.scaler.update()
        if self.ema is not None:
            self._update_ema()
        if self.dist.enabled:
            self._exchange_example_rows(info)
        b = y.shape[0]
        self._add("loss", loss.detach() * b)
        self._add("acc", (logits.detach().argmax(1) == y).sum())
        self._add("pert", (x_adv.detach().float() - x.float()).abs().mean() * b)
        for k, v in self.method.stats().items():
            self._add(f"method_{k}", torch.as_tensor(v, device=self.device).float().mean() * b)

    # ------------------------------------------------------------------------------------------------ several processes
    def _seed_rank_stream(self, offset: int = 0) -> None:
        """This rank's own random stream (ranks >= 1; rank 0 keeps the one-process stream)."""
        torch.manual_seed(self.cfg.seed + 1000003 * self.dist.rank + offset)

    def _share(self, rows: int, info: Any) -> float:
        """rows · world / global batch: 1 when the ranks split the batch evenly (always in one process)."""
        g = getattr(info, "global_batch", None)
        return 1.0 if not self.dist.enabled or not g else rows * self.dist.world_size / g

    def _average_method_grads(self) -> None:
        """The method's learnable scalars (APART) live outside the DDP module: average their gradients here, in one
        all-reduce. Parameters without a gradient are left alone, as the optimiser skips them (every rank runs the
        same code path, so the same ones have gradients everywhere)."""
        params = [p for p in self.method.parameters() if p.grad is not None]
        if not params:
            return
        flat = dist_.all_reduce_sum(torch.cat([p.grad.reshape(-1) for p in params]))
        flat.div_(self.dist.world_size)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.view_as(p.grad))

    @torch.no_grad()
    def _exchange_example_rows(self, info: Any) -> None:
        """Every rank updated the per-example state rows of its share of the batch: gather them all, so each
        replica holds what one process would after this step (indices are unique within a global batch)."""
        buffers = self.method.example_buffers()
        if not buffers:
            return
        g, w = info.global_batch, self.dist.world_size  # each rank's share is known: no count exchange, no sync
        sizes = None if g is None else [hi - lo for lo, hi in (dist_.shard_range(g, r, w) for r in range(w))]
        index = dist_.all_gather_rows(info.index, sizes)
        for buf in buffers:  # (host state, ATAS state_device='cpu': the buffers are on the host, the indices not)
            buf[index.to(buf.device)] = dist_.all_gather_rows(buf[info.index.to(buf.device)].contiguous(), sizes)

    @torch.no_grad()
    def _broadcast_example_state(self) -> None:
        """Rank 0's per-example state everywhere (after it was allocated or re-drawn on each rank with its own
        random stream)."""
        if not self.dist.enabled:
            return
        for buf in self.method.example_buffers():
            dist_.broadcast_(buf)

    @torch.no_grad()
    def _broadcast_model_buffers(self) -> None:
        """Rank 0's BatchNorm statistics everywhere (they drift per rank during the steps), so every rank evaluates
        the same model."""
        if not self.dist.enabled:
            return
        for module in (self.model, self.ema):
            if module is not None:
                for b in module.buffers():
                    dist_.broadcast_(b)

    # ------------------------------------------------------------------------------------------------ CUDA graphs
    def _run_on_side_stream(self, x, y, info) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._step(x, y, info)
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _capture(self, x, y, info, epoch: int) -> None:
        """Capture `_step` on static copies of this batch. Re-done at every epoch start: per-epoch method settings
        (warm-up, q after a roll-back) and tensors replaced by a checkpoint load are baked into a capture."""
        import dataclasses

        self._graph = self._graph_static = None  # the previous capture's memory returns to the pool
        clone = lambda t: None if t is None else t.clone()  # noqa: E731
        static = (x.clone(), y.clone(), dataclasses.replace(info, index=clone(info.index),
                                                            offsets=clone(info.offsets), flips=clone(info.flips)))
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        self.optimizer.zero_grad(set_to_none=True)
        if self.param_optimizer is not None:
            self.param_optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(self.device)
        for _ in range(2):  # a second capture only if the first met epoch sums it had not seen before
            self._missed_in_capture = set()
            graph = torch.cuda.CUDAGraph()
            self._capturing = True
            try:
                with torch.cuda.graph(graph, pool=self._graph_pool):
                    self._step(*static)
            finally:
                self._capturing = False
            if not self._missed_in_capture:
                break
            for key in self._missed_in_capture:  # nothing captured has run yet: no step is counted twice
                self._acc[key] = torch.zeros((), device=self.device)
            graph = None  # release the first capture before the second
        else:
            raise RuntimeError(f"epoch sums {sorted(self._missed_in_capture)} keep changing between captures")
        self._graph, self._graph_static, self._graph_epoch = graph, static, epoch

    def _graphed_step(self, x, y, info, epoch: int) -> bool:
        """Run this batch's step from the captured graph (capturing first if needed); False if the capture failed
        (graph mode is then off and the caller runs the step eagerly)."""
        if self.eager_steps < 3:  # warm-up (lazy state, cuDNN autotuning) before the first capture, on a side stream
            self._run_on_side_stream(x, y, info)
            self.eager_steps += 1
            return True
        if self._graph is None or self._graph_epoch != epoch:
            try:
                self._capture(x, y, info, epoch)
            except Exception as exc:  # noqa: BLE001  (any capture failure: report once, train on eagerly)
                import warnings

                self._graph = self._graph_static = None
                self.graph_mode_failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                warnings.warn(f"fastat: CUDA-graph capture failed ({self.graph_mode_failed}); training eagerly",
                              RuntimeWarning, stacklevel=2)
                torch.cuda.synchronize(self.device)
                return False
        else:
            sx, sy, sinfo = self._graph_static
            sx.copy_(x)
            sy.copy_(y)
            for name in ("index", "offsets", "flips"):
                src = getattr(info, name)
                if src is not None:
                    getattr(sinfo, name).copy_(src)
        self._graph.replay()
        self.graph_replays += 1
        return True

    def step(self, x: torch.Tensor, y: torch.Tensor, info: Any, epoch: int) -> None:
        """One batch of `train_epoch`: `_step` replayed from the CUDA graph in graph mode (full batches), else run
        eagerly (also graph mode's last, smaller batch, or after a failed capture); then the lr schedules."""
        self._budget = self.budget_scale(self.scheduler.last_epoch)
        graphed = (self.graph_mode and self.graph_mode_failed is None and y.shape[0] == self.cfg.batch_size
                   and self._budget == 1.0 and self._graphed_step(x, y, info, epoch))
        if not graphed:
            self._step(x, y, info)
            self.eager_steps += 1
        if self.param_scheduler is not None:
            self.param_scheduler.step()
        self.scheduler.step()

    def budget_scale(self, step: int) -> float:
        """The ε warm-up's factor on ε and α for optimiser step ``step`` (from 0): (step + 1) / warm-up steps, 1
        after (NF's linear per-iteration ramp). Warm-up steps run eagerly in graph mode (a capture bakes ε in)."""
        return 1.0 if step >= self.warmup_steps else (step + 1) / self.warmup_steps

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        from .._progress import progress_bar

        cfg, model = self.cfg, self.model
        self.method.on_epoch_start(epoch)
        self._broadcast_example_state()  # a re-drawn state (ATAS reset): rank 0's everywhere
        model.train()
        for acc in self._acc.values():
            acc.zero_()
        tot_n = 0
        t0 = time.perf_counter()
        show = cfg.progress and self.dist.is_main
        bar = progress_bar(self.loader, enabled=show, desc=f"epoch {epoch}/{cfg.epochs}", leave=False)
        show = not bar.disable  # (a terminal: the postfix below reads the epoch sums, a sync)
        self._first_batch = None
        for x, y, info in bar:
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            if self._first_batch is None and self.cfg.co_check == "wong":  # (the loader may reuse its buffers)
                self._first_batch = (x.detach().clone(), y.detach().clone())
            self.step(x, y, info, epoch)
            tot_n += y.shape[0]
            if show and bar.n % 10 == 0:
                bar.set_postfix(loss=f"{float(self._acc['loss']) / tot_n:.3f}",
                                acc=f"{float(self._acc['acc']) / tot_n:.3f}")
        bar.close()
        if self.dist.enabled:
            keys = sorted(self._acc)
            packed = dist_.all_reduce_sum(torch.stack([self._acc[k] for k in keys] +
                                                      [torch.tensor(float(tot_n), device=self.device)]))
            for k, v in zip(keys, packed[:-1]):
                self._acc[k].copy_(v)
            tot_n = int(packed[-1])
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        sums = {k: float(v) for k, v in self._acc.items()}
        row = {"train_loss": sums["loss"] / tot_n, "train_adv_acc": sums["acc"] / tot_n,
               "pert_abs_mean_over_eps": sums["pert"] / tot_n / cfg.eps,
               "train_seconds": time.perf_counter() - t0, "lr": float(self.optimizer.param_groups[0]["lr"])}
        if self.warmup_steps:
            row["eps_scale"] = self._budget  # the epoch's last step's: 1 once the warm-up is over
        row.update({k: v / tot_n for k, v in sums.items() if k.startswith("method_")})
        if self.graph_mode:
            row["graph_replays"] = self.graph_replays
        return row

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = float(self.cfg.ema)
        for pe, p in zip(self.ema.parameters(), self.model.parameters()):
            pe.mul_(d).add_(p.detach(), alpha=1 - d)
        for be, b in zip(self.ema.buffers(), self.model.buffers()):
            be.copy_(b)

    def evaluate(self, model: nn.Module | None = None) -> dict[str, float]:
        """Clean and PGD-``eval_steps`` (α = ε/4) accuracy on the fixed evaluation slice."""
        from ..eval import pgd_robustness

        cfg = self.cfg
        self._broadcast_model_buffers()
        res = pgd_robustness(model or self.model, self.x_eval, self.y_eval, cfg.eps, cfg.eps / 4,
                             steps=cfg.eval_steps, restarts=cfg.eval_restarts,
                             precision="bf16" if cfg.precision == "bf16" else "fp32", seed=0,
                             distributed=self.dist.enabled)
        return {"clean_acc": res.clean_acc, "pgd_acc": res.robust_acc, "eval_seconds": res.seconds}

    # ------------------------------------------------------------------------------------------------ state
    def _extras(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        if self.dist.enabled:  # every rank's streams (a collective: all ranks call `save`)
            mine = {"torch": rng["torch"]}
            if self.device.type == "cuda":
                mine["cuda"] = torch.cuda.get_rng_state(self.device)
            rng["ranks"] = dist_.all_gather_object(mine)
        extra = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "method": self.method.state_dict(), "method_name": self.method.name, "rng": rng,
                 "loader": self.loader.state_dict(), "config": self.cfg.to_dict(), "history": self.history,
                 "monitor": self.monitor.state_dict(), "rollbacks": self.rollbacks,
                 "scaler": self.scaler.state_dict()}
        if self.param_optimizer is not None:
            extra["param_optimizer"] = self.param_optimizer.state_dict()
            extra["param_scheduler"] = self.param_scheduler.state_dict()
        if self.ema is not None:
            extra["ema"] = self.ema.state_dict()
        return extra

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint (under torchrun: every rank must call it; rank 0 writes, the others wait)."""
        extras = self._extras()
        if self.dist.is_main:
            path = save_checkpoint(path, model=self.model, model_config=self.model_config,
                                   dataset=self.cfg.dataset, eps=self.cfg.eps, epoch=self.epoch,
                                   world_size=self.dist.world_size, **extras)
        dist_.barrier()
        return Path(path)

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by `save` (everything needed to continue bit-identically on the CPU)."""
        self._restore(self._read(path))

    def _read(self, path: str | Path) -> dict[str, Any]:
        """Load a training checkpoint (weights only: no pickled code runs; checksum verified) and check, before any
        state is touched, that it holds what `_restore` needs with the model's keys and shapes; `CheckpointError`
        naming the file and the first problem otherwise."""
        ck = load_checkpoint(path, map_location=self._ckpt_location)
        missing = [k for k in RESTORED if k not in ck]
        if missing:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks {', '.join(missing)}: not a training checkpoint "
                                  f"of fastat train")
        own, theirs = self.model.state_dict(), ck["model"]
        problem = next((f"missing tensor {k!r}" for k in own if k not in theirs), None) or next(
            (f"unexpected tensor {k!r}" for k in theirs if k not in own), None) or next(
            (f"tensor {k!r} has shape {tuple(theirs[k].shape)}, the model's {tuple(v.shape)}" for k, v in own.items()
             if isinstance(theirs[k], torch.Tensor) and theirs[k].shape != v.shape), None)
        if problem:
            raise CheckpointError(f"checkpoint {str(path)!r} does not fit this model: {problem}")
        return ck

    def _restore(self, ck: dict[str, Any]) -> None:
        self._graph = self._graph_static = None  # a capture holds the tensors a load replaces (method, optimizer)
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.method.load_state_dict(ck["method"])
        self.method.to(self.device)
        self.loader.load_state_dict(ck["loader"])
        self.monitor.load_state_dict(ck["monitor"])
        self.scaler.load_state_dict(ck["scaler"])
        if self.param_optimizer is not None and "param_optimizer" in ck:
            self.param_optimizer.load_state_dict(ck["param_optimizer"])
            self.param_scheduler.load_state_dict(ck["param_scheduler"])
        if self.ema is not None and "ema" in ck:
            self.ema.load_state_dict(ck["ema"])
        torch.set_rng_state(ck["rng"]["torch"].cpu())
        if "cuda" in ck["rng"] and torch.cuda.is_available():
            # the devices this machine has: rank 0 of a torchrun job on 8 GPUs saved the states of all 8
            torch.cuda.set_rng_state_all([s.cpu() for s in ck["rng"]["cuda"][:torch.cuda.device_count()]])
        ranks = ck["rng"].get("ranks")
        if self.dist.enabled:
            if ranks is not None and len(ranks) == self.dist.world_size:
                mine = ranks[self.dist.rank]
                torch.set_rng_state(mine["torch"].cpu())
                if "cuda" in mine and self.device.type == "cuda":
                    torch.cuda.set_rng_state(mine["cuda"].cpu(), self.device)
            else:  # written by another number of processes: fresh per-rank streams (not bit-identical)
                self._seed_rank_stream(int(ck["epoch"]))
        self.history = list(ck["history"])
        if self.writer is not None:
            self.writer.rows = list(self.history)
        self.rollbacks = int(ck.get("rollbacks", 0))
        self.epoch = int(ck["epoch"])

    def _resolved_config(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """A config dict with the values left to the recipe filled in (`recipes`: device type, model name, lr_max,
        eps_warmup)."""
        from ..methods import without_placement

        d = {**TrainConfig().to_dict(), **cfg}  # a field newer than the checkpoint: it was trained with its default
        d["device"] = str(d.get("device") or self.device.type).split(":")[0]
        d["model"] = d.get("model") or default_model(d["device"])
        if d.get("lr_max") is None:
            d["lr_max"] = default_lr(d["model"], int(d["batch_size"]))
        if d.get("eps_warmup") is None:
            d["eps_warmup"] = default_eps_warmup(d["dataset"], d["model"])
        d["milestones"] = [float(m) for m in d.get("milestones", ())]
        # where the method keeps its state (ATAS state_device) may change between a run and its resumption
        d["method_kwargs"] = without_placement(d.get("method_kwargs") or {})
        return d

    def check_resumable(self, saved: dict[str, Any]) -> None:
        """Raise ConfigError if the checkpoint's config differs from this run's in anything that changes training."""
        old, new = self._resolved_config(saved), self._resolved_config(self.cfg.to_dict())
        diff = [k for k in sorted(set(old) | set(new)) if k not in RESUME_FREE and old.get(k) != new.get(k)]
        if diff:
            was = ", ".join(f"{k}={old.get(k)!r}" for k in diff)
            now = ", ".join(f"{k}={new.get(k)!r}" for k in diff)
            hints = [f"the default of {k} changed from {o!r} to {n!r} on {day}: pass {k}={o!r}"
                     for k, (o, n, day) in CHANGED_DEFAULTS.items() if k in diff and old.get(k) == o
                     and getattr(self.cfg, k) == TrainConfig.__dataclass_fields__[k].default]
            raise ConfigError(f"cannot resume {self.out}: its checkpoint was written with {was} (now {now}); "
                              "pass the same arguments, or another --out to start a new run"
                              + "".join(f" ({h})" for h in hints))

    def resume(self) -> bool:
        """Load ``out/checkpoint.pt`` if there is one; returns whether it did. Raises ConfigError (before touching
        any state) if the checkpoint was written with a config that differs in anything but `RESUME_FREE` keys."""
        if self.out is None or not (self.out / CKPT).exists():
            return False
        try:
            ck = self._read(self.out / CKPT)
        except CheckpointError as exc:  # damaged (a disk error, a bit flip): the last good epoch, if there is one
            if not (self.out / GOOD).exists():
                raise
            try:
                ck = self._read(self.out / GOOD)
            except CheckpointError as also:
                raise CheckpointError(f"{exc}; {GOOD} is no better: {also}") from None
            self._say(f"fastat train: {exc}; resuming from {GOOD} (epoch {ck['epoch']}) instead")
        if ck.get("config") is not None:
            self.check_resumable(ck["config"])
        self._restore(ck)
        if self.writer is not None:
            self.writer.flush()
        return True

    # ------------------------------------------------------------------------------------------------ loop
    def _log(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self.writer is not None:
            self.writer.write(row)

    def fit(self) -> list[dict[str, Any]]:
        """Train until ``epochs``; returns the metrics rows (epochs and CO events)."""
        cfg = self.cfg
        self.write_manifest()
        while self.epoch < cfg.epochs:
            epoch = self.epoch + 1
            row: dict[str, Any] = {"event": "epoch", "epoch": epoch, **self.train_epoch(epoch)}
            # before the evaluation: the "wong" check runs in train mode and moves the BatchNorm statistics, and the
            # numbers logged must be those of the weights saved
            co_acc, co = self._co_check()
            row.update(self.evaluate())
            if self.ema is not None:
                row.update({f"ema_{k}": v for k, v in self.evaluate(self.ema).items() if k != "eval_seconds"})
            dead = self._divergence(row)
            if dead:  # not CO: no roll-back, no last_good.pt, no best.pt
                row["diverged"], co = dead, False
            row.update({"co_pgd_acc": co_acc, "co": co, **{f"hp_{k}": v for k, v in self.method.hparams.items()
                                                           if isinstance(v, (int, float, str)) and k != "method"}})
            if self.dist.enabled:  # one decision for all ranks: rank 0's row (timings differ per rank)
                row["world_size"] = self.dist.world_size
                row = dist_.broadcast_object(row)
                co_acc, co, dead = row["co_pgd_acc"], row["co"], row.get("diverged")
            self.epoch = epoch
            self._print(row)
            roll = co and cfg.on_co == "rollback" and self.out is not None and self.rollbacks < cfg.max_rollbacks \
                and dist_.broadcast_object((self.out / GOOD).exists())
            if roll:
                self._roll_back(epoch, co_acc)
                continue
            self._log(row)
            if self.out is not None and (cfg.checkpoint or cfg.on_co == "rollback"):  # a roll-back needs them
                self._checkpoint_epoch(row, good=not (co or dead))
            if dead and cfg.on_diverge == "stop":
                self.stopped = dead
                self._say(self._divergence_message(epoch, dead))
                self._log({"event": "diverged", "at_epoch": epoch, "reason": dead})
                break
            if co and cfg.on_co == "stop":
                self._say(f"CO at epoch {epoch} (check PGD acc {co_acc:.3f}): stopping")
                self._log({"event": "stop", "at_epoch": epoch})
                break
        if cfg.final_eval != "none" and self.final is None:
            self.final_evaluation()
        return self.history

    @property
    def _ckpt_location(self) -> torch.device:
        """Where checkpoints are loaded: the training device, except for per-example state kept in host memory (ATAS
        ``state_device="cpu"``), which must not pass through the GPU whole (every tensor is copied to its place
        by the load_state_dict calls anyway)."""
        return torch.device("cpu") if self.method.host_state else self.device

    def _divergence(self, row: dict[str, Any]) -> str | None:
        """Why the model is dead or diverged after this epoch (`monitor.divergence`), or None: non-finite weights or
        a non-finite loss (not under fp16, whose grad scaler skips overflowing steps) at any epoch; clean accuracy at
        the evaluation slice's chance level after the first epoch (the first may start slowly: the cyclic lr begins
        at 0)."""
        params = [p.detach() for p in self.model.parameters()]
        weights_ok = bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True
        loss = row["train_loss"] if self.cfg.precision != "fp16" else 0.0
        clean = row["clean_acc"] if row["epoch"] > 1 else 1.0
        return divergence(clean, self.chance, loss, weights_ok)

    def _divergence_message(self, epoch: int, reason: str) -> str:
        """The one line a dead run stops with: what was seen, the likely cause, the flags to change."""
        cfg = self.cfg
        warm = (f"--eps-warmup {max(1, cfg.epochs // 5)}" if not self.warmup_steps else
                f"a longer --eps-warmup than {self.eps_warmup:g}")
        return (f"fastat train: stopped at epoch {epoch}, the model is dead: {reason}. Likely cause: a learning rate "
                f"too high for {self.model_name} at batch {cfg.batch_size} (--lr-max {self.lr_max:g}), or the full "
                f"eps {cfg.eps:g} from scratch; try --lr-max {self.lr_max / 2:g} or {warm} (--on-diverge log trains "
                f"on)")

    def _co_check(self) -> tuple[float, bool]:
        """The CO monitor's (accuracy, CO?) after an epoch: the fixed test batch, or the epoch's first training batch
        ("wong")."""
        if isinstance(self.monitor, WongCODetector):
            return self.monitor.check(self.model, *self._first_batch, self.cfg.precision,
                                      distributed=self.dist.enabled)
        return self.monitor.check(self.model, self.cfg.precision, distributed=self.dist.enabled)

    def final_evaluation(self) -> dict[str, Any]:
        """PGD-50-10 (α = ε/4, fp32, seed 0) and, with ``final_eval="pgd+aa"``, standard AutoAttack on the first
        ``final_n`` test images, for the last weights, the best-PGD epoch's (``best.pt``, Rice et al.'s early
        stopping; "best vs last" is what CO hides) and the EMA weights. Written to ``final_eval.json`` and printed;
        also kept in ``self.final``. Sharded over the ranks under torchrun."""
        from ..eval import pgd_robustness, run_autoattack

        cfg = self.cfg
        n = min(cfg.final_n, len(self.test_set))
        x = self.test_set.images[:n].float().div(255).to(self.device)
        y = self.test_set.labels[:n].long().to(self.device)
        self._broadcast_model_buffers()
        models: dict[str, tuple[nn.Module, int]] = {"last": (self.model, self.epoch)}
        if self.out is not None and (self.out / BEST).exists():
            best = self._read(self.out / BEST)
            if best["epoch"] != self.epoch:
                model = copy.deepcopy(self.model)
                model.load_state_dict(best["model"])
                models["best"] = (model, int(best["epoch"]))
            else:
                models["best"] = (self.model, self.epoch)
        if self.ema is not None:
            models["ema"] = (self.ema, self.epoch)
        results: dict[str, dict[str, Any]] = {}
        for name, (model, epoch) in models.items():
            if name == "best" and model is self.model:
                results[name] = dict(results["last"])
                continue
            r = pgd_robustness(model, x, y, cfg.eps, cfg.eps / 4, steps=FINAL_STEPS, restarts=FINAL_RESTARTS,
                               seed=0, progress=cfg.progress and self.dist.is_main, distributed=self.dist.enabled)
            res = {"epoch": epoch, "clean_acc": r.clean_acc, "pgd_acc": r.robust_acc_max_loss,
                   "pgd_any_acc": r.robust_acc_any, "pgd_seconds": r.seconds}
            if cfg.final_eval == "pgd+aa":
                aa = run_autoattack(model, x, y, cfg.eps, version="standard", device=self.device, seed=0,
                                    distributed=self.dist.enabled)
                res.update({"autoattack_acc": aa.robust_acc, "autoattack_seconds": aa.seconds})
            results[name] = res
        self.final = {"n": n, "eps": cfg.eps, "alpha": cfg.eps / 4, "steps": FINAL_STEPS, "restarts": FINAL_RESTARTS,
                      "accounting": "max_loss (official); pgd_any_acc: any restart", "precision": "fp32",
                      "world_size": self.dist.world_size, "models": results}
        if self.dist.is_main:
            if self.out is not None:
                import json

                (self.out / FINAL).write_text(json.dumps(self.final, indent=2) + "\n")
            print(f"final evaluation: PGD-{FINAL_STEPS}-{FINAL_RESTARTS} (alpha = eps/4) on {n} test images\n"
                  + final_eval_table({self.out.name if self.out is not None else "run": self.final}), flush=True)
        return self.final

    def write_manifest(self) -> dict[str, Any]:
        """``run.json``: what this run is, for reproducing and comparing runs — the resolved config (seed included),
        the method with its hyper-parameters, the model, data and evaluation sizes, processes, device, versions and
        the ops backend. Rewritten each time `fit` starts (``started_at_epoch`` > 0 after a resume)."""
        import datetime
        import json
        import platform

        from .. import __version__, ops

        device = str(self.device)
        if self.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(self.device)})"
        manifest = {
            "config": self._resolved_config(self.cfg.to_dict()), "method": self.method.describe(),
            "hparams": {k: v for k, v in self.method.hparams.items() if isinstance(v, (int, float, str, bool))},
            "model": self.model_config or {"name": type(self.model).__name__, "custom": True},
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "train_examples": self.loader.num_examples, "steps_per_epoch": len(self.loader),
            "eval_n": int(self.x_eval.shape[0]), "co_check": self.cfg.co_check,
            "co_batch": int(self.monitor.x.shape[0]) if isinstance(self.monitor, COMonitor) else self.cfg.batch_size,
            "world_size": self.dist.world_size, "device": device, "ops_backend": ops.get_backend(),
            "versions": {"fastat": __version__, "torch": torch.__version__, "python": platform.python_version(),
                         "cuda": torch.version.cuda},
            "started_at_epoch": self.epoch,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if self.out is not None and self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "run.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        return manifest

    def _roll_back(self, epoch: int, co_acc: float) -> None:
        """Restore ``last_good.pt``, keep the hyper-parameters and roll-back events since, strengthen the method."""
        cfg = self.cfg
        hparams = dict(self.method.state_dict()["hparams"])  # keep earlier roll-backs' changes
        rollbacks, history = self.rollbacks, list(self.history)
        self.load(self.out / GOOD)
        for k, v in hparams.items():
            setattr(self.method, k, v)
        # the count and the events of roll-backs since the good checkpoint survive the load
        self.history += [r for r in history[len(self.history):] if r.get("event") == "rollback"]
        if self.writer is not None:
            self.writer.rows = list(self.history)
        self.rollbacks = rollbacks + 1
        change = strengthen(self.method, q_step=cfg.q_step, alpha_factor=cfg.alpha_factor)
        ev = {"event": "rollback", "at_epoch": epoch, "to_epoch": self.epoch, "change": change, "co_pgd_acc": co_acc}
        self._say(f"CO at epoch {epoch} (check PGD acc {co_acc:.3f}): rolled back to epoch {self.epoch}, {change}")
        self._log(ev)
        self.save(self.out / CKPT)

    def _checkpoint_epoch(self, row: dict[str, Any], good: bool) -> None:
        """``checkpoint.pt``, copied to ``last_good.pt`` when the epoch is ``good`` (neither CO nor diverged) and to
        ``best.pt`` on a new best PGD accuracy of a good epoch (rank 0 writes; every rank returns once the files are
        there)."""
        path = self.save(self.out / CKPT)
        if self.dist.is_main and good:  # atomic copies: a kill mid-copy keeps the previous file whole
            copy_checkpoint(path, self.out / GOOD)
            earlier = [r["pgd_acc"] for r in self.history[:-1] if r.get("event") == "epoch" and not r.get("diverged")]
            if not earlier or row["pgd_acc"] > max(earlier):
                copy_checkpoint(path, self.out / BEST)
        dist_.barrier()

    def _say(self, text: str) -> None:
        if self.dist.is_main:
            print(text, flush=True)

    def _print(self, r: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        ema = f" ema clean {r['ema_clean_acc']:.3f} pgd {r['ema_pgd_acc']:.3f}" if "ema_pgd_acc" in r else ""
        print(f"epoch {r['epoch']:3d} loss {r['train_loss']:.4f} clean {r['clean_acc']:.3f} "
              f"pgd {r['pgd_acc']:.3f}{ema} co-check {r['co_pgd_acc']:.3f}{' CO!' if r['co'] else ''} "
              f"train {r['train_seconds']:.1f}s eval {r['eval_seconds']:.1f}s", flush=True)


def _init_group(device_type: str) -> dist_.Dist:
    """`fastat.distributed.init`, with a torchrun environment that lacks or garbles RANK/LOCAL_RANK (or a bad
    FASTAT_DIST_TIMEOUT) reported as one ConfigError line."""
    try:
        return dist_.init(device_type)
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None


def fit(config: TrainConfig | None = None, *, model: nn.Module | None = None, resume: bool = False,
        **kw: Any) -> Trainer:
    """Train with ``TrainConfig(**kw)`` (or ``config``); returns the `Trainer` (``.history``, ``.model``)."""
    trainer = Trainer(config, model=model, **kw)
    if resume:
        trainer.resume()
    trainer.fit()
    return trainer
