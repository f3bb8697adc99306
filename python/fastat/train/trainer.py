"""`Trainer`: SGD adversarial training with any `fastat.methods` method — build, step, epoch, fit and the CO roll-back.
`fit(**config)` is the one-call API.

Per step: x_adv = method.perturb(model, x, y, batch) (the model's passes inside it under autocast at
``attack_precision``, by default ``precision``; δ, the step and the attack loss stay fp32), loss =
CE(model(x_adv).float(), y) (+ method.extra_loss), SGD (momentum 0.9, wd 5e-4) with a per-batch lr schedule; fp16
uses a GradScaler; during an ε warm-up ε and α are scaled per step (`budget_scale`). After each epoch: the CO check
(`monitor`), clean + PGD accuracy on the evaluation slice (`evaluation`), the divergence check, metrics files and the
checkpoints (`state`); a CO epoch may roll back to ``last_good.pt`` (`co_response`), a dead model stops the run.

Where the rest lives: `replicas` (several processes under torchrun: DDP and what the ranks keep equal), `graphs`
(``cuda_graph=True``: the whole step captured once per epoch and replayed), `state` (checkpoints, resume, run.json),
`evaluation` (per-epoch and final evaluation settings), `monitor` (CO detectors, divergence), `co_response` (the
roll-back and its messages), `recipes` (defaults), `optimizers` (SGD, lr schedules, GradScaler, EMA).

``compile="default"`` (or another `torch.compile` mode): the attacks' forwards and backwards and the training forward
and backward run through ``torch.compile(model)`` (under torchrun, the training forward through the compiled DDP
wrapper). GradAlign's regulariser (double backprop, which compiled graphs do not support: pytorch#91469), the
per-epoch evaluation, the CO check and the final evaluation stay eager. Not combined with ``cuda_graph``. Compiled
kernels are not bit-identical to eager ones, so a resumed run matches a straight one only within float noise.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed as dist_
from .._malloc import tune_for
from ..eval import autocast
from . import evaluation, state
from .config import ConfigError, TrainConfig
from .graphs import EpochSums, GraphedStep
from .co_response import check_text, roll_back
from .monitor import chance_level, divergence, make_monitor
from .recipes import default_model, divergence_hint
from .records import MetricsWriter
from .replicas import Replicas, join_processes
from .optimizers import build_optimizers, update_ema

__all__ = ["Trainer", "fit"]


class Trainer:
    """Build everything from a `TrainConfig` (validated; bad input raises `ConfigError` before training)."""

    def __init__(self, config: TrainConfig | None = None, *, model: nn.Module | None = None, **kw: Any) -> None:
        from ..data import load_dataset_cached, make_loader
        from ..methods import build_method
        from ..models import build_model, model_config_for

        if isinstance(model, str):  # a model name, as in TrainConfig(model=...)
            kw["model"], model = model, None
        cfg = config if config is not None else TrainConfig(**kw)
        cfg.validate()
        self.cfg = cfg
        self.dist, self.device = join_processes(torch.device(cfg.resolved_device()), cfg.device)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)  # CUDA-graph capture, cuDNN and the evaluators use the current device
        # a CPU step's activations come from glibc's heap instead of fresh pages faulted in each step (`_malloc`)
        self.malloc = tune_for(self.device)
        try:
            train, test = (load_dataset_cached(cfg.dataset, cfg.data_root, split, cfg.download)
                           for split in ("train", "test"))
        except (FileNotFoundError, OSError, ValueError, ImportError) as exc:  # ImportError: torchvision missing
            raise ConfigError(f"cannot load dataset {cfg.dataset!r}: {str(exc).splitlines()[0]}") from None
        cfg.validate_against_data(len(train), self.dist.world_size)
        torch.manual_seed(cfg.seed)
        self.loader = make_loader(train, batch_size=cfg.batch_size, device=self.device, train=True, seed=cfg.seed,
                                  subset=cfg.subset, rank=self.dist.rank, world_size=self.dist.world_size,
                                  pad_mode=cfg.pad_mode, drop_last=cfg.drop_last)
        try:
            self.method = build_method(cfg.method, eps=cfg.eps, run_epochs=cfg.epochs, **cfg.method_kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc).splitlines()[0]) from None
        self.model_name = cfg.model or default_model(self.device.type)
        self.model_config: dict[str, Any] | None = None
        if model is None:
            self.model_config = model_config_for(self.model_name, train, **cfg.model_kwargs)
            model = build_model(**self.model_config)
        self.model = model.to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.method.to(self.device)
        self.method.attach(self.model)  # before the optimisers: APART adopts the model's noise sites (α_b scalars)
        recipe = state.resolved_config(cfg.to_dict(), self.device.type)  # what the recipe fills in for None
        self.lr_max, self.eps_warmup = float(recipe["lr_max"]), float(recipe["eps_warmup"])
        self.warmup_steps = round(self.eps_warmup * len(self.loader))
        self._budget = 1.0  # this step's ε-warm-up scale (`budget_scale`)
        self.graph_mode = bool(cfg.cuda_graph)  # (validate checked it: a CUDA device, one process, state there)
        # what the attacks run (`attack_model`) and what the training forward runs (`train_model`): the model itself,
        # the DDP wrapper under torchrun, compiled with `compile`; all share `self.model`'s parameters and buffers
        self.attack_model: nn.Module = self._compiled(self.model)
        self.train_model: nn.Module = self.attack_model
        self.replicas = Replicas(self.dist, self.method, cfg.seed)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = self._compiled(DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None))
            if self.dist.rank:  # rank 0 keeps the one-process stream (model init may have drawn from it already)
                self.replicas.seed_rank_stream()
            self.replicas.prepare_example_state(self.loader, int(train.images.shape[1]), self.device)
        (self.optimizer, self.scheduler, self.param_optimizer, self.param_scheduler, self.scaler,
         self.ema) = build_optimizers(self.model, self.method, cfg, steps=cfg.epochs * len(self.loader),
                                      lr_max=self.lr_max, device=self.device, graph_mode=self.graph_mode)
        self.test_set = test
        n_eval = min(cfg.eval_n, len(test))
        self.x_eval = test.images[:n_eval].float().div(255).to(self.device)
        self.y_eval = test.labels[:n_eval].long().to(self.device)
        self.monitor = make_monitor(cfg, self.x_eval, self.y_eval)
        self.wants_train_grad = self.method.needs_train_grad or self.monitor.needs_train_grad
        self.chance = chance_level(self.y_eval)  # a constant predictor's accuracy on the evaluation slice
        self.stopped: str | None = None  # why training stopped early (a diverged model), else None
        self._first_batch: tuple[torch.Tensor, torch.Tensor] | None = None  # this epoch's, if the monitor needs it
        self.out = Path(cfg.out) if cfg.out else None
        try:
            self.writer = MetricsWriter(self.out, plot=cfg.plot) if self.out and self.dist.is_main else None
        except OSError as exc:  # a file of that name, no permission, a read-only file system
            raise ConfigError(f"argument 'out' ({cfg.out!r}) cannot be used as the run folder: "
                              f"{exc.strerror or exc}") from None
        self.history: list[dict[str, Any]] = []
        self.epoch = self.rollbacks = 0
        self.sums = EpochSums(self.device)  # per-epoch device sums (persistent: a captured step adds into them)
        self.graphed = GraphedStep(self._step, self.sums, self.device, self._zero_grads) if self.graph_mode else None
        self.eager_steps = 0  # steps run eagerly (graph mode also reports `graph_replays`)
        self.final: dict[str, Any] | None = None  # `final_evaluation`'s report

    @property
    def graph_replays(self) -> int:
        return self.graphed.replays if self.graphed is not None else 0

    @property
    def graph_mode_failed(self) -> str | None:
        """Why a CUDA-graph capture failed (graph mode then trains eagerly), else None."""
        return self.graphed.failed if self.graphed is not None else None

    def _compiled(self, module: nn.Module) -> nn.Module:
        """``torch.compile(module)`` with ``compile``'s mode, else the module. The wrapper shares the module's
        parameters; dynamo's guard on the input's ``requires_grad`` gives the attacks (input gradient only) their own
        graph."""
        return module if self.cfg.compile is None else torch.compile(module, mode=self.cfg.compile)

    # ------------------------------------------------------------------------------------------------ steps
    def _autocast(self, precision: str | None = None):
        return autocast(self.device, precision or self.cfg.precision, cache_enabled=not self.graph_mode)

    def _zero_grads(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.param_optimizer is not None:
            self.param_optimizer.zero_grad(set_to_none=True)

    def _step(self, x: torch.Tensor, y: torch.Tensor, info: Any) -> None:
        """One training step: attack, loss, backward, optimizer step(s), EMA and the epoch sums. Never syncs with the
        host, so in CUDA-graph mode the whole of it is captured once per epoch and replayed."""
        cfg, model = self.cfg, self.model
        with self._autocast(cfg.attack_precision), self.method.scaled_budget(self._budget):
            x_adv = self.method.perturb(self.attack_model, x, y, info)
        if self.wants_train_grad:  # the training backward also leaves ∇_{x_adv} of the loss (SORA, PertAlign)
            if x_adv.requires_grad:  # APART: x_adv carries a graph to its scalars
                x_adv.retain_grad()
            else:
                x_adv = x_adv.detach().requires_grad_(True)
        with self._autocast():
            loss, logits = self.method.train_loss(self.train_model, x, y, x_adv, cfg.label_smoothing)
            with self.method.scaled_budget(self._budget):  # eager: double backprop (pytorch#91469)
                reg = self.method.extra_loss(model, x, y, x_adv.detach(), info)
            total = loss if reg is None else loss + reg.float()
        share = self.replicas.share(y.shape[0], info)
        if share != 1.0:  # DDP averages the ranks' gradients: weight each rank's mean by its share of the batch
            total = total * share
        self._zero_grads()
        self.scaler.scale(total).backward()
        if self.wants_train_grad:
            self._hand_over_train_grad(x_adv.grad, share)
        self.replicas.average_method_grads()
        self.scaler.step(self.optimizer)
        if self.param_optimizer is not None:
            self.scaler.step(self.param_optimizer)
        self.scaler.update()
        if self.ema is not None:
            update_ema(self.ema, model, float(cfg.ema))
        self.replicas.exchange_example_rows(info)
        b, add = y.shape[0], self.sums.add
        add("loss", loss.detach() * b)
        add("acc", (logits.detach().argmax(1) == y).sum())
        add("pert", (x_adv.detach().float() - x.float()).abs().mean() * b)
        for k, v in self.method.stats().items():
            add(f"method_{k}", torch.as_tensor(v, device=self.device).float().mean() * b)

    def _hand_over_train_grad(self, grad: torch.Tensor | None, share: float) -> None:
        """∇_{x_adv} of the training loss, back in the batch-mean form (without the rank's share and fp16's loss
        scale), to the method (SORA's linearity estimate) and the PertAlign check; nothing when the loss does not
        reach x_adv (NuAT's first epoch trains on the clean loss alone)."""
        if grad is None:
            return
        grad = grad.float() / share
        if self.scaler.is_enabled():  # fp16 only (a host read of the scale; fp16 is never graph-captured)
            grad = grad / self.scaler.get_scale()
        if self.method.needs_train_grad:
            self.method.observe_train_grad(grad)
        if self.monitor.needs_train_grad:
            self.monitor.observe(self.method.attack_grad, grad)

    def step(self, x: torch.Tensor, y: torch.Tensor, info: Any, epoch: int) -> None:
        """One batch of `train_epoch`: `_step` replayed from the CUDA graph in graph mode (full batches outside the ε
        warm-up, whose per-step ε a capture would bake in), else run eagerly (also after a failed capture); then the
        lr schedules."""
        self._budget = self.budget_scale(self.scheduler.last_epoch)
        graph = (self.graphed is not None and self.graphed.failed is None and y.shape[0] == self.cfg.batch_size
                 and self._budget == 1.0)
        if graph and self.eager_steps < GraphedStep.WARMUP:
            self.graphed.warm_up(x, y, info)
            self.eager_steps += 1
        elif not (graph and self.graphed.replay(x, y, info, epoch)):
            self._step(x, y, info)
            self.eager_steps += 1
        if self.param_scheduler is not None:
            self.param_scheduler.step()
        self.scheduler.step()

    def budget_scale(self, step: int) -> float:
        """The ε warm-up's factor on ε and α for optimiser step ``step`` (from 0): (step + 1) / warm-up steps, 1
        after (NF's linear per-iteration ramp)."""
        return 1.0 if step >= self.warmup_steps else (step + 1) / self.warmup_steps

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        from .._progress import progress_bar

        cfg = self.cfg
        self.method.on_epoch_start(epoch)
        self.replicas.broadcast_example_state()  # a re-drawn state (ATAS reset): rank 0's everywhere
        self.model.train()
        self.sums.zero_()
        tot_n, t0 = 0, time.perf_counter()
        bar = progress_bar(self.loader, enabled=cfg.progress and self.dist.is_main, desc=f"epoch {epoch}/{cfg.epochs}",
                           leave=False)
        self._first_batch = None
        for x, y, info in bar:
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            if self._first_batch is None and self.monitor.needs_first_batch:  # (the loader may reuse its buffers)
                self._first_batch = (x.detach().clone(), y.detach().clone())
            self.step(x, y, info, epoch)
            tot_n += y.shape[0]
            if not bar.disable and bar.n % 10 == 0:  # a terminal: the postfix reads the sums (a sync)
                bar.set_postfix(loss=f"{float(self.sums.sums['loss']) / tot_n:.3f}",
                                acc=f"{float(self.sums.sums['acc']) / tot_n:.3f}")
        bar.close()
        tot_n = self.replicas.sum_over_ranks(self.sums.sums, tot_n)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        sums = {k: float(v) for k, v in self.sums.sums.items()}
        row = {"train_loss": sums["loss"] / tot_n, "train_adv_acc": sums["acc"] / tot_n,
               "pert_abs_mean_over_eps": sums["pert"] / tot_n / cfg.eps,
               "train_seconds": time.perf_counter() - t0, "lr": float(self.optimizer.param_groups[0]["lr"])}
        if self.warmup_steps:
            row["eps_scale"] = self._budget  # the epoch's last step's: 1 once the warm-up is over
        row.update({k: v / tot_n for k, v in sums.items() if k.startswith("method_")})
        if self.graph_mode:
            row["graph_replays"] = self.graph_replays
        return row

    # ------------------------------------------------------------------------------------------------ evaluation, state
    evaluate = evaluation.evaluate                  # clean + PGD on the evaluation slice (this or another model)
    final_evaluation = evaluation.final_evaluation  # PGD-50-10 (+ AutoAttack) of the last, best and EMA weights
    save = state.save                               # write a checkpoint (under torchrun every rank calls it)
    load = state.load                               # restore one (everything to continue bit-identically on the CPU)
    resume = state.resume                           # continue from out/checkpoint.pt if there is one
    check_resumable = state.check_resumable         # refuse a checkpoint whose settings change the training
    write_manifest = state.write_manifest           # run.json
    _roll_back = roll_back                          # a CO epoch under on_co='rollback' (`co_response`)

    # ------------------------------------------------------------------------------------------------ loop
    def fit(self) -> list[dict[str, Any]]:
        """Train until ``epochs``; returns the metrics rows (epochs and CO events)."""
        cfg = self.cfg
        self.write_manifest()
        while self.epoch < cfg.epochs:
            epoch = self.epoch + 1
            row: dict[str, Any] = {"event": "epoch", "epoch": epoch, **self.train_epoch(epoch)}
            # before the evaluation: the "wong" check runs in train mode and moves the BatchNorm statistics, and the
            # numbers logged must be those of the weights saved
            co_acc, co = self.monitor.after_epoch(self.model, cfg.precision, self._first_batch, self.dist.enabled)
            row.update(self.evaluate())
            if self.ema is not None:
                row.update({f"ema_{k}": v for k, v in self.evaluate(self.ema).items() if k != "eval_seconds"})
            dead = self._divergence(row)
            if dead:  # not CO: no roll-back, no last_good.pt, no best.pt
                row["diverged"], co = dead, False
            row.update({self.monitor.metric: co_acc, "co": co, **{f"hp_{k}": v for k, v in self.method.hparams.items()
                                                           if isinstance(v, (int, float, str)) and k != "method"}})
            if self.dist.enabled:  # one decision for all ranks: rank 0's row (timings differ per rank)
                row["world_size"] = self.dist.world_size
                row = dist_.broadcast_object(row)
                co_acc, co, dead = row[self.monitor.metric], row["co"], row.get("diverged")
            self.epoch = epoch
            self._print(row)
            if co and cfg.on_co == "rollback" and self.out is not None and self.rollbacks < cfg.max_rollbacks \
                    and dist_.broadcast_object((self.out / state.GOOD).exists()):
                if self._roll_back(epoch, co_acc):
                    continue
                break
            self._log(row)
            if self.out is not None and (cfg.checkpoint or cfg.on_co == "rollback"):  # a roll-back needs them
                state.checkpoint_epoch(self, row, good=not (co or dead))
            if dead and cfg.on_diverge == "stop":
                self.stopped = dead
                self.say(divergence_hint(epoch=epoch, reason=dead, model=self.model_name, batch_size=cfg.batch_size,
                                         lr_max=self.lr_max, eps=cfg.eps, epochs=cfg.epochs,
                                         eps_warmup=self.eps_warmup, method_hint=self.method.divergence_hint()))
                self._log({"event": "diverged", "at_epoch": epoch, "reason": dead})
                break
            if co and cfg.on_co == "stop":
                self.say(f"CO at epoch {epoch} ({check_text(self.monitor, co_acc)}): stopping")
                self._log({"event": "stop", "at_epoch": epoch})
                break
        if cfg.final_eval != "none" and self.final is None:
            self.final_evaluation()
        return self.history

    def _divergence(self, row: dict[str, Any]) -> str | None:
        """Why the model is dead or diverged after this epoch (`monitor.divergence`), or None: non-finite weights or
        a non-finite loss (not under fp16, whose grad scaler skips overflowing steps) at any epoch; clean accuracy at
        the evaluation slice's chance level after the first epoch (the first may start slowly: the cyclic lr begins
        at 0)."""
        loss = row["train_loss"] if self.cfg.precision != "fp16" else 0.0
        return divergence(row["clean_acc"] if row["epoch"] > 1 else 1.0, self.chance, loss, self.model)

    def _log(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self.writer is not None:
            self.writer.write(row)

    def say(self, text: str) -> None:
        """Print on rank 0."""
        if self.dist.is_main:
            print(text, flush=True)

    def _print(self, r: dict[str, Any]) -> None:
        ema = f" ema clean {r['ema_clean_acc']:.3f} pgd {r['ema_pgd_acc']:.3f}" if "ema_pgd_acc" in r else ""
        self.say(f"epoch {r['epoch']:3d} loss {r['train_loss']:.4f} clean {r['clean_acc']:.3f} "
                 f"pgd {r['pgd_acc']:.3f}{ema} co-check {r[self.monitor.metric]:.3f}{' CO!' if r['co'] else ''} "
                 f"train {r['train_seconds']:.1f}s eval {r['eval_seconds']:.1f}s")


def fit(config: TrainConfig | None = None, *, model: nn.Module | None = None, resume: bool = False,
        **kw: Any) -> Trainer:
    """Train with ``TrainConfig(**kw)`` (or ``config``); returns the `Trainer` (``.history``, ``.model``)."""
    trainer = Trainer(config, model=model, **kw)
    if resume:
        trainer.resume()
    trainer.fit()
    return trainer
