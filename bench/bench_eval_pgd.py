"""PGD-50-10 evaluation: the batched engine vs the plain loop (issue 5's target: >= 5x on an H100, same accuracy).

Workload: PreActResNet-18 on 10k CIFAR-sized inputs, PGD-50 with 10 restarts, early stopping, max-loss accounting.
Without a trained checkpoint (--checkpoint) the model is fitted for --fit-steps SGD steps to random labels on the
synthetic inputs (so it has real, varied decision boundaries), labels are its clean predictions, and ε is calibrated
(bisection on a 512-sample probe, PGD-10) so that about --target-robust of the samples survive — the work profile of a robust model (~45 % PGD accuracy), which is what decides how much early stopping can save. Reports
wall time, rows forwarded, robust accuracy under both accountings and per-sample flag mismatches vs the plain loop,
plus the bf16-vs-fp32 difference in robust accuracy.

GPU:        python bench/bench_eval_pgd.py --device cuda --out bench_eval_pgd.json
CPU smoke:  python bench/bench_eval_pgd.py --device cpu --model small-cnn --n 64 --input-size 16 --steps 3 \\
                --restarts 2 --plain-batch-size 32 --precision fp32
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from fastat.checkpoint import load_checkpoint, model_from_checkpoint
from fastat.eval import pgd_robustness
from fastat.models import build_model


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="preact18", help="preact18 | wrn28-10 | wrn34-10 | small-cnn")
    p.add_argument("--checkpoint", default=None, help="a fastat checkpoint to evaluate instead of a random model")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--restarts", type=int, default=10)
    p.add_argument("--eps", type=float, default=None, help="default: calibrated to --target-robust")
    p.add_argument("--alpha", type=float, default=None, help="default: eps/4")
    p.add_argument("--target-robust", type=float, default=0.45)
    p.add_argument("--fit-steps", type=int, default=100, help="SGD steps on random labels for a random model")
    p.add_argument("--plain-batch-size", default="128,512", help="comma list; the reference codes use 128")
    p.add_argument("--batch-size", type=int, default=None, help="batched engine rows per forward (default: auto)")
    p.add_argument("--precision", default="fp32,bf16", help="comma list; plain runs in the first one only")
    p.add_argument("--channels-last", action="store_true", help="channels_last model weights (both engines)")
    p.add_argument("--cudnn-benchmark", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def make_model(args, device):
    if args.checkpoint:
        return model_from_checkpoint(load_checkpoint(args.checkpoint)).to(device)
    torch.manual_seed(args.seed)
    kw = {"width": 8, "hidden": 32} if args.model == "small-cnn" else {}
    return build_model(args.model, in_channels=args.channels, num_classes=args.classes, input_size=args.input_size,
                       **kw).to(device)


def fit_random_labels(model, x, steps, seed):
    """A few SGD steps towards random labels: gives a random model varied predictions and decision boundaries."""
    gen = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(0, model(x[:2]).shape[1], (x.shape[0],), generator=gen).to(x.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model.train()
    for i in range(steps):
        idx = torch.randint(0, x.shape[0], (min(256, x.shape[0]),), generator=gen).to(x.device)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    model.requires_grad_(False)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calibrate_eps(model, x, y, target, device) -> float:
    lo, hi = 1e-4, 0.5
    for _ in range(10):
        mid = (lo * hi) ** 0.5
        r = pgd_robustness(model, x, y, mid, mid / 4, steps=10, restarts=1, device=device)
        lo, hi = (mid, hi) if r.robust_acc > target else (lo, mid)
    return (lo * hi) ** 0.5


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    model = make_model(args, device).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.n, args.channels, args.input_size, args.input_size, generator=gen).to(device)
    if not args.checkpoint and args.fit_steps > 0:
        fit_random_labels(model, x, args.fit_steps, args.seed)
    with torch.no_grad():
        y = torch.cat([model(x[i:i + 1024]).argmax(1) for i in range(0, args.n, 1024)])
    probe = slice(0, min(512, args.n))
    eps = args.eps if args.eps is not None else calibrate_eps(model, x[probe], y[probe], args.target_robust, device)
    alpha = args.alpha if args.alpha is not None else eps / 4
    precisions = args.precision.split(",")
    plain_sizes = [int(b) for b in args.plain_batch_size.split(",") if b]
    common = dict(steps=args.steps, restarts=args.restarts, seed=args.seed, device=device)

    warm = slice(0, min(256, args.n))  # cuDNN/autotune warm-up for both engines, not timed
    for impl in ("plain", "batched"):
        for prec in precisions:
            pgd_robustness(model, x[warm], y[warm], eps, alpha, steps=2, restarts=2, impl=impl, precision=prec,
                           device=device, batch_size=128)

    runs = []

    def record(label, res):
        runs.append({"label": label, **res.to_dict()})
        print(f"{label:<28} {res.seconds:9.2f} s  rows={res.forward_rows:>10}  clean={res.clean_acc:.4f}  "
              f"robust(max_loss)={res.robust_acc_max_loss:.4f}  robust(any)={res.robust_acc_any:.4f}", flush=True)

    print(f"device={device} model={args.model} n={args.n} eps={eps:.5f} alpha={alpha:.5f} "
          f"PGD-{args.steps}-{args.restarts}", flush=True)
    plain = {}
    for bs in plain_sizes:
        sync(device)
        plain[bs] = pgd_robustness(model, x, y, eps, alpha, impl="plain", precision=precisions[0], batch_size=bs,
                                   **common)
        record(f"plain {precisions[0]} bs={bs}", plain[bs])
    batched = {}
    for prec in precisions:
        batched[prec] = pgd_robustness(model, x, y, eps, alpha, impl="batched", precision=prec,
                                       batch_size=args.batch_size, **common)
        record(f"batched {prec} rows={batched[prec].settings['batch_size']}", batched[prec])

    ref = batched[precisions[0]]
    summary = {}
    for bs, p in plain.items():
        summary[f"speedup_vs_plain_bs{bs}"] = p.seconds / ref.seconds
        summary[f"flag_mismatch_max_loss_bs{bs}"] = int((p.robust_max_loss != ref.robust_max_loss).sum())
        summary[f"flag_mismatch_any_bs{bs}"] = int((p.robust_any != ref.robust_any).sum())
    if "bf16" in batched and "fp32" in batched:
        summary["bf16_minus_fp32_robust_max_loss"] = batched["bf16"].robust_acc_max_loss - \
            batched["fp32"].robust_acc_max_loss
        summary["bf16_vs_fp32_seconds_ratio"] = batched["bf16"].seconds / batched["fp32"].seconds
    for k, v in summary.items():
        print(f"{k:<36} {v:.4g}" if isinstance(v, float) else f"{k:<36} {v}")
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "python": sys.version.split()[0], "n": args.n, "model": args.model,
            "eps": eps, "alpha": alpha, "steps": args.steps, "restarts": args.restarts,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "runs": runs, "summary": summary}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
