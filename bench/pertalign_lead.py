"""PertAlign as a CO check, measured against the PGD check on the CO atlas's runs (issue 22, item 4).

For each (method, ε, seed) given, this trains the atlas's run again (`bench/co_atlas.py`'s settings, same seed) with
``--co-check pertalign --on-co log`` and compares, epoch by epoch, the epochs PertAlign flags with the epochs the
atlas run's PGD check flagged (the atlas runs with the default test-batch PGD check, ``--on-co log`` except ZeroGrad,
so pass the methods without roll-back). Neither check changes training (the PGD check draws from its own generator,
PertAlign reads gradients the step computes anyway), so both runs follow the same trajectory: the script checks that
their training losses agree. It also times training steps with and without handing the training loss's input
gradient over (the check's whole cost), alternating the two, on the same batch.

    python bench/pertalign_lead.py --runs runs/co_atlas --out runs/pertalign --cells fgsm:0.25:0,fgsm:0.25:1

Writes ``--results``/pertalign.md and .json: per run the first flagged epoch of each check, the lead (PGD check's
epoch − PertAlign's), PertAlign's flags on runs the PGD check never flagged, and the step cost.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench")]
import co_atlas  # noqa: E402  (the atlas's settings and run folders)
import co_atlas_report  # noqa: E402  (the environment line and the page writer)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", required=True, help="comma list of method:eps:seed (atlas runs without roll-back)")
    p.add_argument("--runs", default="runs/co_atlas", help="the atlas's run folders")
    p.add_argument("--out", default="runs/pertalign", help="where the PertAlign runs go")
    p.add_argument("--results", default=str(REPO / "docs" / "results"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timing-steps", type=int, default=40, help="training steps timed per setting (0: skip)")
    p.add_argument("--ratio", type=float, default=0.5, help="the relative rule's fraction (`--pertalign-ratio`)")
    p.add_argument("--atlas-flags", default="", help="the atlas's own flags when its runs used other settings than "
                                                     "its defaults (e.g. \"--subset 128 --epochs 1\")")
    args = p.parse_args(argv)
    cells = []
    for item in args.cells.split(","):
        try:
            method, eps, seed = item.split(":")
            cells.append((method, float(eps), int(seed)))
        except ValueError:
            p.error(f"--cells: expected method:eps:seed, got {item!r}")
    args.cells = cells
    args.atlas = co_atlas.parse_args(["--runs", args.runs, "--no-yardstick", *shlex.split(args.atlas_flags)])
    return args


def _config(args: argparse.Namespace, method: str, eps: float, seed: int, out: Path | None):
    cfg = co_atlas.fastat_config(args.atlas, co_atlas.Task("fastat", method, eps, seed))
    cfg.co_check, cfg.on_co, cfg.out = "pertalign", "log", None if out is None else str(out)
    return cfg


def _train(job: tuple[argparse.Namespace, str, float, int]) -> str:
    import torch

    from fastat.train.sweeps import finished_result, train_run
    from fastat.train.records import run_identity

    torch.set_num_threads(1)
    args, method, eps, seed = job
    folder = Path(args.out) / f"eps{eps:g}" / f"{method}-s{seed}"
    cfg = _config(args, method, eps, seed, folder)
    if finished_result(folder, run_identity(cfg)) is None:
        train_run(method, cfg, folder, move_unfinished=False, resume_free=())
    return str(folder)


def _epochs(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("event") == "epoch"]


ABSOLUTE = 0.2  # the first rule fastat's PertAlign check had (`--co-drop`'s default): CO at a fall of this much


def replay(values: list[float | None], is_co) -> list[int]:
    """Epochs (from 1) a PertAlign check flags, replayed on an epoch series as `PertAlignDetector.after_epoch` runs
    it: ``is_co(value, best)`` with ``best`` the best earlier epoch that was not flagged. Both rules are computed
    from the same numbers, however the run itself was configured."""
    flags, best = [], -math.inf
    for epoch, v in enumerate(values, start=1):
        if v is None or not math.isfinite(v):
            continue
        if is_co(v, best):
            flags.append(epoch)
        else:
            best = max(best, v)
    return flags


def rules(ratio: float) -> dict[str, Any]:
    """The two PertAlign rules: the absolute fall it started with and fastat's relative one (`relative_fall`)."""
    from fastat.train.monitor import relative_fall

    return {"absolute": lambda v, best: math.isfinite(best) and v < best - ABSOLUTE,
            "relative": lambda v, best: relative_fall(v, best, ratio)}


def compare(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for method, eps, seed in args.cells:
        atlas = _epochs(co_atlas.run_dir(args.atlas, co_atlas.Task("fastat", method, eps, seed)) / "metrics.jsonl")
        mine = _epochs(Path(args.out) / f"eps{eps:g}" / f"{method}-s{seed}" / "metrics.jsonl")
        same = all(math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-5) for a, b in zip(atlas, mine))
        pgd_flag = next((r["epoch"] for r in atlas if r.get("co")), None)
        values = [r.get("pertalign") for r in mine]
        row = {"method": method, "eps": eps, "seed": seed, "same_trajectory": same and len(atlas) == len(mine),
               "pgd_check_first_co": pgd_flag, "pgd_check_flags": [r["epoch"] for r in atlas if r.get("co")]}
        for rule, is_co in rules(args.ratio).items():
            flags = replay(values, is_co)
            row[f"{rule}_flags"] = flags
            row[f"{rule}_lead_epochs"] = None if pgd_flag is None or not flags else pgd_flag - flags[0]
        out.append({**row, "pertalign": values, "pgd20": [r["pgd_acc"] for r in atlas],
                    "clean": [r["clean_acc"] for r in atlas]})
    return out


def step_cost(args: argparse.Namespace) -> dict[str, Any]:
    """Median seconds per training step of FGSM-RS on the atlas's setting with the training loss's input gradient
    handed to the PertAlign check and without it, alternating blocks of steps on one batch."""
    import torch

    from fastat.train import Trainer

    torch.set_num_threads(1)
    method, eps, seed = "fgsm_rs", args.atlas.demo_eps, 0
    trainer = Trainer(_config(args, method, eps, seed, None))
    x, y, info = next(iter(trainer.loader))
    times: dict[bool, list[float]] = {True: [], False: []}
    for block in range(2 * max(1, args.timing_steps // 5)):
        on = block % 2 == 0
        trainer.wants_train_grad = on
        for _ in range(5):
            t0 = time.perf_counter()
            trainer._step(x, y, info)
            times[on].append(time.perf_counter() - t0)
    with_, without = statistics.median(times[True]), statistics.median(times[False])
    return {"method": method, "batch": int(y.shape[0]), "steps_each": len(times[True]), "median_s_with": with_,
            "median_s_without": without, "overhead": with_ / without - 1}


def main(argv: list[str] | None = None) -> int:
    import multiprocessing as mp

    args = parse_args(argv)
    jobs = [(args, m, e, s) for m, e, s in args.cells]
    if args.workers == 1:  # in this process (no pool to spawn)
        for job in jobs:
            print("done", _train(job), flush=True)
    else:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for folder in pool.imap_unordered(_train, jobs):
                print("done", folder, flush=True)
    runs = compare(args)
    cost = step_cost(args) if args.timing_steps else None
    env = co_atlas_report.environment(args.atlas)
    doc = {"env": env, "date": datetime.date.today().isoformat(), "runs": runs, "step_cost": cost}
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    (res / "pertalign.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = ["# PertAlign as a CO check, beside the PGD check", "",
             f"Measured by fastat on {doc['date']} ({env.get('device', '')}); command: `python bench/pertalign_lead.py "
             f"--cells {','.join(f'{m}:{e:g}:{s}' for m, e, s in args.cells)}`. Each run is the CO atlas's "
             "(co_atlas.md: same settings and seed) trained again with `--co-check pertalign --on-co log`; the PGD "
             "check's flags are the atlas run's (PGD-10 on 256 test images, CO at a fall of more than `--co-drop` "
             "below its best). PertAlign, the epoch's mean cosine between the attack's and the training loss's input "
             "gradients, is judged by two rules replayed on the same numbers: fastat's (`--pertalign-ratio`: CO "
             f"once it falls below {args.ratio:g} × its best earlier epoch) and the absolute fall of "
             f"{ABSOLUTE:g} below its best it started with. Lead: the PGD check's first flag minus the rule's.", "",
             f"| run | same trajectory | PGD check flags | relative ({args.ratio:g} × best) flags | lead (epochs) | "
             f"absolute (best − {ABSOLUTE:g}) flags | lead (epochs) | PertAlign by epoch | PGD-20 % by epoch |",
             "|---|---|---|---|---|---|---|---|---|"]

    def lead(v: int | None) -> str:
        return "–" if v is None else str(v)

    for r in runs:
        pa = " ".join("–" if v is None else f"{v:.2f}" for v in r["pertalign"])
        pgd = " ".join(f"{100 * v:.0f}" for v in r["pgd20"])
        lines.append(f"| {r['method']} ε={r['eps']:g} s{r['seed']} | {'yes' if r['same_trajectory'] else 'no'} | "
                     f"{r['pgd_check_flags'] or 'none'} | {r['relative_flags'] or 'none'} | "
                     f"{lead(r['relative_lead_epochs'])} | {r['absolute_flags'] or 'none'} | "
                     f"{lead(r['absolute_lead_epochs'])} | {pa} | {pgd} |")
    if cost:
        lines += ["", f"Step cost ({cost['method']}, batch {cost['batch']}, {cost['steps_each']} steps each, "
                      f"alternating): {1e3 * cost['median_s_without']:.1f} ms without, "
                      f"{1e3 * cost['median_s_with']:.1f} ms with the hand-over ({100 * cost['overhead']:+.1f} %)."]
    co_atlas_report.write_keeping(res / "pertalign.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
