"""``fastat sweep``: several methods x several seeds with the same training flags, then mean ± std over seeds.

Each run trains with `fastat.train.Trainer` in this process (the data set is decoded once) into ``OUT/<label>-s<seed>``
(runs in seed-major order, so a sweep cut short still holds each method at its first seeds). A folder whose
``run_result.json`` holds a finished run with the same settings (`run_identity`) is skipped; one with the same
settings and a ``checkpoint.pt`` is resumed from it (bit-identical on the CPU), so re-running a killed sweep ends
where an uninterrupted one would; a folder holding other settings is moved aside to ``<name>.old-<date>``. Every
run's config is built and checked (a Trainer is constructed) before anything trains: a bad method, ``--hp`` key or
flag is one `ConfigError` line (exit 2). A run that raises anything else is recorded as failed and the sweep goes on
(exit 1). Outputs, rewritten after every run: summary.json / summary.csv (one row per run), summary.md (one row per
method: mean ± sample std over the finished seeds) and curves.png (per-method mean accuracy per epoch, min-max band).

``--hp KEY=VALUE`` applies to every method, ``--hp LABEL.KEY=VALUE`` to that method only; a key naming a
`TrainConfig` field (e.g. ``on_co``, ``co_drop``) sets that field, anything else is a method hyper-parameter
(`parse_hp`, `split_overrides`; bench/acceptance.py uses the same). ``--methods`` items are ``method`` or
``label=method`` (the same method twice with different ``--hp``). Under torchrun every run uses all ranks (one
process group; rank 0 decides skip/resume and writes the files).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .. import distributed as dist_
from .config import ConfigError, TrainConfig, parse_value
from .records import (FINISHED, plot_sweep, read_json, run_identity, same_run, summarize_epochs, sweep_aggregate,
                      sweep_markdown, sweep_run_row)

__all__ = ["CONFIG_FIELDS", "add_parser", "finished_result", "parse_hp", "parse_methods", "run", "split_overrides",
           "sweep", "train_run"]

CONFIG_FIELDS = frozenset(TrainConfig.__dataclass_fields__) - {"method"}
SPEC, RESULT = "run_spec.json", "run_result.json"
_LABEL = re.compile(r"^[A-Za-z0-9_+-]+$")


# ---------------------------------------------------------------------------------------------- plans (shared)
def parse_methods(items: Iterable[str]) -> dict[str, str]:
    """``{label: canonical method}`` from items ``method`` or ``label=method`` (comma lists are split); raises
    ConfigError naming an unknown method or a repeated label."""
    from ..methods import METHODS, canonical_name

    plan: dict[str, str] = {}
    for item in (part.strip() for text in items for part in str(text).split(",")):
        if not item:
            continue
        label, _, name = item.partition("=") if "=" in item else (item, "", item)
        method = canonical_name(name.strip())
        if method not in METHODS:
            raise ConfigError(f"--methods: unknown method {name.strip()!r}; choose from {', '.join(METHODS)}")
        label = label.strip()
        if label in plan:
            raise ConfigError(f"--methods: label {label!r} is given twice; labels name the run folders and must "
                              f"differ (write LABEL=METHOD, e.g. {label}2={name.strip()})")
        plan[label] = method
    return plan


def parse_hp(texts: Iterable[str], labels: Iterable[str], *, scoped_only: bool = False,
             on_unknown_label: Callable[[str], None] | None = None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Split ``KEY=VALUE`` (every method) and ``LABEL.KEY=VALUE`` (that label only) texts into ``(common,
    {label: overrides})``; values go through `parse_value`. ``scoped_only`` rejects unscoped keys. A label that is
    not in ``labels`` is a ConfigError, or is reported to ``on_unknown_label(text)`` and ignored."""
    labels = list(labels)
    common: dict[str, Any] = {}
    scoped: dict[str, dict[str, Any]] = {label: {} for label in labels}
    for text in texts:
        key, sep, value = str(text).partition("=")
        label, dot, field = key.strip().partition(".") if "." in key else ("", "", key.strip())
        if not sep or not field or (dot and not label) or (scoped_only and not dot):
            raise ConfigError(f"--hp: expected {'LABEL.KEY=VALUE' if scoped_only else '[LABEL.]KEY=VALUE'}, got "
                              f"{text!r}")
        if not dot:
            common[field] = parse_value(value, field)
        elif label in scoped:
            scoped[label][field] = parse_value(value, field)
        elif on_unknown_label is not None:
            on_unknown_label(text)
        else:
            raise ConfigError(f"--hp {text!r}: {label!r} is not one of the selected methods ({', '.join(labels)})")
    return common, scoped


def split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(TrainConfig fields, method hyper-parameters)`` of a dict of overrides."""
    return ({k: v for k, v in overrides.items() if k in CONFIG_FIELDS},
            {k: v for k, v in overrides.items() if k not in CONFIG_FIELDS})


# ---------------------------------------------------------------------------------------------- one run (shared)
def finished_result(run_dir: Path, spec: dict[str, Any], result_file: str = RESULT) -> dict[str, Any] | None:
    """The result record of a finished run in ``run_dir`` with these settings, else None."""
    prior = read_json(Path(run_dir) / result_file)
    return prior if isinstance(prior, dict) and same_run(prior.get("spec"), spec) else None


def train_run(label: str, cfg: TrainConfig, run_dir: Path, *, spec_file: str = SPEC, result_file: str = RESULT,
              announce: Callable[[Any, bool], None] | None = None, move_unfinished: bool = True,
              resume_free: Iterable[str] = ()) -> dict[str, Any]:
    """Train (or resume) one run into ``run_dir``; returns its result record (also written to ``result_file``).

    A checkpoint of the same settings (``spec_file``; keys in ``resume_free`` may differ, e.g. ``final_eval``: a
    finished run then only runs its final evaluation) is resumed. A non-empty folder that is not resumed is moved to
    ``<name>.old-<date>`` (with ``move_unfinished=False`` only when it holds other settings; the same settings
    without a checkpoint start over in place). ``announce(trainer, resumed)`` is called before training."""
    import torch

    from .state import CKPT
    from .trainer import Trainer

    cfg, spec, run_dir = copy.deepcopy(cfg), run_identity(cfg), Path(run_dir)
    resume = False
    if dist_.current().is_main:
        old, free = read_json(run_dir / spec_file), set(resume_free)
        same = same_run(old, spec, free)
        resume = same and (run_dir / CKPT).exists()
        if run_dir.exists() and not resume and not (same and not move_unfinished) and any(run_dir.iterdir()):
            stale = run_dir.with_name(f"{run_dir.name}.old-{datetime.datetime.now():%Y%m%d-%H%M%S}")
            run_dir.rename(stale)
            print(f"{run_dir} held another run; moved to {stale.name}", flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / spec_file).write_text(json.dumps(spec, indent=1))
    resume = dist_.broadcast_object(resume)
    cfg.out = str(run_dir)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    resumed = trainer.resume() if resume else False
    start_epoch = trainer.epoch
    if announce is not None:
        announce(trainer, resumed)
    trainer.fit()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    rows = [r for r in trainer.history if r.get("event", "epoch") == "epoch"]
    if resumed:  # the time of the epochs done before, as the metrics recorded it
        seconds += sum(r["train_seconds"] + r["eval_seconds"] for r in rows if r["epoch"] <= start_epoch)
    hparams = {k: v for k, v in trainer.method.hparams.items() if v is None or isinstance(v, (int, float, str))}
    result = {"label": label, "method": cfg.method, "status": "resumed" if resumed else "done", "spec": spec,
              "hparams": hparams, "describe": trainer.method.describe(), "seconds": seconds,
              "rollbacks": trainer.rollbacks, "rows": rows,
              "events": [r for r in trainer.history if r.get("event", "epoch") != "epoch"], **summarize_epochs(rows)}
    if trainer.final is not None:
        result["final"] = trainer.final
    if dist_.current().is_main:
        (run_dir / result_file).write_text(json.dumps(result, indent=1, default=str))
    dist_.barrier()
    return result


# ---------------------------------------------------------------------------------------------- the sweep
def plan_runs(base: TrainConfig, methods: Iterable[str], seeds: Iterable[int], out: str | Path,
              hp: Iterable[str] = ()) -> list[tuple[str, int, TrainConfig, Path]]:
    """``[(label, seed, config, run folder)]`` in seed-major order; raises ConfigError on bad methods/seeds/--hp or a
    bad ``base`` (validated here: its recipe defaults, e.g. ε, are filled in)."""
    base.validate()
    labels = parse_methods(methods)
    if not labels:
        raise ConfigError("--methods: give at least one method")
    bad = [label for label in labels if not _LABEL.match(label)]
    if bad:
        raise ConfigError(f"--methods: label {bad[0]!r} must be letters, digits, '_', '+' or '-'")
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ConfigError(f"--seeds: expected one or more ints, got {seeds!r}")
    seeds = list(dict.fromkeys(seeds))
    common, scoped = parse_hp(hp, labels)
    plan = []
    for seed in seeds:
        for label, method in labels.items():
            fields, mkw = split_overrides({**common, **scoped[label]})
            for key in ("method", "seed", "out", "method_kwargs"):
                if key in fields:
                    raise ConfigError(f"--hp: {key!r} is set by the sweep (--methods, --seeds, --out, --hp KEY=VALUE)")
            kw = {"model_kwargs": dict(base.model_kwargs), **fields}
            cfg = dataclasses.replace(base, method=method, seed=seed, method_kwargs={**base.method_kwargs, **mkw}, **kw)
            plan.append((label, seed, cfg, Path(out) / f"{label}-s{seed}"))
    _check_out(Path(out))
    return plan


def _check_out(out: Path) -> None:
    """The sweep folder must be a writable folder, or creatable in one: ConfigError now, not after the first run
    (nothing is created here)."""
    from .._files import check_writable_folder

    try:
        check_writable_folder(out)
    except OSError as exc:
        raise ConfigError(f"--out {str(out)!r} cannot be used as the sweep folder: {exc.strerror or exc}") from None


def check_plan(plan: list[tuple[str, int, TrainConfig, Path]]) -> None:
    """Build a Trainer for each label's config (not per seed: seeds do not change what is valid), so anything the
    Trainer would refuse (bad flag, hyper-parameter, batch larger than the data, ...) raises ConfigError now."""
    import gc

    from .trainer import Trainer

    seen = set()
    with tempfile.TemporaryDirectory() as tmp:
        for label, _, cfg, _ in plan:
            if label in seen:
                continue
            seen.add(label)
            try:
                trainer = Trainer(dataclasses.replace(copy.deepcopy(cfg), out=str(Path(tmp) / label), progress=False))
            except ConfigError as exc:
                raise ConfigError(f"{label}: {exc}") from None
            del trainer
            gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _say(text: str) -> None:
    if dist_.current().is_main:
        print(text, flush=True)


def run_plan(plan: list[tuple[str, int, TrainConfig, Path]], out: str | Path) -> dict[str, Any]:
    """Train every planned run that is not finished yet (see the module docstring); returns the summary document."""
    import gc

    import torch

    out = Path(out)
    results: dict[tuple[str, int], dict[str, Any]] = {}
    failed = []
    for i, (label, seed, cfg, run_dir) in enumerate(plan, 1):
        tag = f"[{i}/{len(plan)}] {label} seed {seed}"
        spec = run_identity(cfg)
        prior = dist_.broadcast_object(finished_result(run_dir, spec) if dist_.current().is_main else None)
        if prior is not None:
            results[label, seed] = {**prior, "status": "reused"}
            _say(f"{tag}: finished run in {run_dir}, skipped")
            continue

        def announce(trainer, resumed, tag=tag, run_dir=run_dir):
            again = f", resumed at epoch {trainer.epoch}" if resumed else ""
            _say(f"{tag}: {trainer.method.describe()}, {trainer.model_name}, {trainer.cfg.epochs} epochs{again} "
                 f"-> {run_dir}")

        try:
            results[label, seed] = train_run(label, cfg, run_dir, announce=announce, move_unfinished=False,
                                             resume_free=("final_eval", "final_n"))
        except Exception as exc:  # noqa: BLE001 - record, go on with the other runs, exit 1 at the end
            traceback.print_exc()
            msg = (str(exc).splitlines() or [""])[0][:200]
            results[label, seed] = {"status": f"error: {type(exc).__name__}: {msg}", "method": cfg.method}
            failed.append(f"{label}-s{seed}")
            _say(f"{tag}: failed ({type(exc).__name__}: {msg})")
        gc.collect()  # the finished Trainer's memory goes before the next run
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if dist_.current().is_main and i < len(plan):  # the report so far; the last one is written below
            write_report(out, plan, results)
    doc = write_report(out, plan, results, write=dist_.current().is_main)
    doc["failed"] = failed
    return doc


def write_report(out: Path, plan: list[tuple[str, int, TrainConfig, Path]], results: dict[tuple[str, int], dict],
                 *, write: bool = True) -> dict[str, Any]:
    """summary.json / .csv (one row per run), summary.md (one row per method) and curves.png in ``out``; returns the
    summary document (``markdown``: the table)."""
    import csv

    rows = [sweep_run_row(label, seed, cfg.method, run_dir, results.get((label, seed), {"status": "not run"}))
            for label, seed, cfg, run_dir in plan]
    methods = sweep_aggregate(rows)
    cfg = plan[0][2]
    import torch

    from .recipes import default_model

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = cfg.model or default_model(str(device).split(":")[0])
    seeds = list(dict.fromkeys(seed for _, seed, _, _ in plan))
    head = (f"fastat sweep, {datetime.date.today().isoformat()}: {cfg.dataset} eps={cfg.eps:g}, "
            f"{model}, {cfg.epochs} epochs, batch {cfg.batch_size}, "
            f"subset {cfg.subset or 'all'}, "
            f"{cfg.precision}, seeds {' '.join(map(str, seeds))}; last-epoch accuracies, PGD-{cfg.eval_steps} "
            f"(alpha = eps/4) on {cfg.eval_n} test images; mean ± sample std over the finished seeds.")
    md = sweep_markdown(head, methods)
    doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "seeds": seeds,
           "methods": methods, "runs": rows, "markdown": md}
    if not write:
        return doc
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / "summary.md").write_text(md + "\n")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows([{**r, "co_epochs": " ".join(map(str, r["co_epochs"] or []))} for r in rows])
    curves: dict[str, list] = {}
    for label, seed, _, _ in plan:
        r = results.get((label, seed), {})
        if r.get("status") in FINISHED and r.get("rows"):
            curves.setdefault(label, []).append(r["rows"])
    if curves:
        try:
            title = (f"{cfg.dataset} eps={cfg.eps:g}, {model}, {cfg.epochs} epochs, "
                     f"seeds {' '.join(map(str, seeds))}: mean, min-max band")
            plot_sweep(curves, out / "curves.png", title)
        except Exception as exc:  # noqa: BLE001 - a plotting problem must not lose the sweep
            print(f"fastat sweep: could not draw curves.png: {exc}", file=sys.stderr)
    return doc


def sweep(methods: Iterable[str], seeds: Iterable[int], out: str | Path, *, hp: Iterable[str] = (),
          **train_kwargs: Any) -> dict[str, Any]:
    """Train each method (``method`` or ``label=method``) with each seed into ``out/<label>-s<seed>`` with
    ``TrainConfig(**train_kwargs)`` plus ``hp`` (``"KEY=VALUE"`` for all, ``"LABEL.KEY=VALUE"`` for one); returns
    the summary document (``runs``: one row per run, ``methods``: mean/std per label, ``failed``: run names).
    Raises ConfigError (before training anything) on bad arguments."""
    for key in ("method", "seed", "out"):
        if key in train_kwargs:
            raise ConfigError(f"argument {key!r} is set by the sweep (methods, seeds, out)")
    try:
        base = TrainConfig(**train_kwargs)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    plan = plan_runs(base, [methods] if isinstance(methods, str) else methods, seeds, out, hp)
    check_plan(plan)
    return run_plan(plan, out)


# ---------------------------------------------------------------------------------------------- CLI
def add_parser(subparsers) -> argparse.ArgumentParser:
    from .cli import add_train_arguments

    p = subparsers.add_parser("sweep", help="several methods x seeds with the same flags, mean ± std over seeds",
                              description=__doc__.split("\n\n")[0].replace("``fastat sweep``: ", ""))
    p.add_argument("--methods", nargs="+", required=True, metavar="[LABEL=]METHOD",
                   help="methods to compare (fgsm_rs n_fgsm zerograd ...; label=method for variants)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="default: 0 1 2")
    p.add_argument("--out", default="runs/sweep", help="sweep folder: one run folder per method and seed, summary.*")
    p.add_argument("--hp", action="append", default=[], metavar="[LABEL.]KEY=VALUE",
                   help="hyper-parameter or TrainConfig field for every method, or LABEL.KEY=VALUE for one "
                        "(repeatable; e.g. --hp zerograd.q=0.7 --hp steps=10)")
    add_train_arguments(p, exclude=("method", "seed", "out", "resume", "overwrite", "method_kwargs"))  # own --hp
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .cli import config_from_args

    try:
        base = config_from_args(argparse.Namespace(**{**vars(args), "method": "fgsm", "seed": 0, "out": None,
                                                      "hp": []}))
        plan = plan_runs(base, args.methods, args.seeds, args.out, args.hp)
        check_plan(plan)
    except ConfigError as exc:
        print(f"fastat sweep: error: {exc}", file=sys.stderr)
        return 2
    doc = run_plan(plan, args.out)
    if dist_.current().is_main:
        if doc["failed"]:
            print(f"\nfailed runs: {', '.join(doc['failed'])}", file=sys.stderr)
        print(f"\nwrote {Path(args.out) / 'summary'}.{{json,csv,md}} and curves.png\n")
        print(doc["markdown"])
    dist_.shutdown()
    return 1 if doc["failed"] else 0
