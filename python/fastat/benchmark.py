"""Op benchmarks: every op x backend x shape against pure PyTorch and the copy floor, measured in one process.

On CUDA, time = median of CUDA-event-timed launches after warm-up with an L2 flush between repetitions
(`triton.testing.do_bench` when triton is importable); on CPU, the median of `torch.utils.benchmark` measurements.
Backends are called through their implementation (`_dispatch.implementation`), so the numbers are kernel costs
without the Python argument checks of the public wrappers. "copy floor" is a `clone()` of the gradient: a fused
memory-bound kernel that reads g once and writes δ once costs about that; `pct_floor` compares each kernel with the
copy time scaled to the bytes that op must move (OpSpec.bytes_moved). The pseudo-backend "compile" times
`torch.compile(reference)` (Liger-Kernel's torch_compile provider; opt-in: each op x shape compiles once, seconds to
minutes), and every row then also has its speed-up over it. `write_results` saves the rows as ops.csv, ops.json,
ops.md and ops.png (the speed-ups over PyTorch as a grouped bar chart); `compare` flags regressions against an
earlier run (xformers' regression gate).
"""

from __future__ import annotations

import csv
import datetime as _dt
import inspect
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .ops import _dispatch, reference
from .ops._schemas import HOT_PATHS
from .ops._specs import SPECS

CUDA_SHAPES = ((512, 3072), (128, 3072), (64, 150528))
CPU_SHAPES = ((128, 784), (512, 3072))
COMPILE = "compile"  # the torch.compile(reference) baseline, a pseudo-backend
REGRESSION = 0.10    # `compare`: slower than the earlier run by more than this fraction


@dataclass
class Row:
    op: str
    backend: str
    rows: int
    cols: int
    grad_dtype: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    gbps: float
    speedup_vs_torch: float
    copy_floor_ms: float
    floor_ratio: float  # time / (copy time scaled to the op's bytes): 1.0 = at the floor, 2.0 = twice it
    speedup_vs_compile: float = math.nan  # over torch.compile(reference), when the "compile" baseline ran


def time_ms(fn: Callable[[], object], device: torch.device, reps: int = 100) -> tuple[float, float, float]:
    """(median, p20, p80) in milliseconds."""
    if device.type == "cuda":
        try:
            from triton.testing import do_bench

            q = do_bench(fn, rep=max(25, reps), quantiles=[0.5, 0.2, 0.8])
            return float(q[0]), float(q[1]), float(q[2])
        except ImportError:
            return _cuda_events(fn, reps)
    from torch.utils import benchmark

    fn()  # warm-up
    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.2)
    times = sorted(t * 1e3 for t in m.times)
    return m.median * 1e3, _quantile(times, 0.2), _quantile(times, 0.8)


def _quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _cuda_events(fn, reps: int) -> tuple[float, float, float]:
    for _ in range(10):
        fn()
    flush = torch.empty(64 * 2**20, dtype=torch.int8, device="cuda")
    times = []
    for _ in range(reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8)


def _grad_position(op: str) -> int:
    """Where ``op``'s per-batch tensor sits in its arguments (the reference's signature, which a test keeps equal to
    the schema), hence in a sample's args: the gradient (``grad``, or MultiGrad's ``grads``), else ``x``
    (``atas_gather``). The copy floor is that tensor's clone, not one of a whole-data-set buffer's."""
    names = list(inspect.signature(getattr(reference, op)).parameters)
    for wanted in (("grad", "grads"), ("x",)):
        for i, name in enumerate(names):
            if name in wanted:
                return i
    raise KeyError(f"{op}: no grad or x argument in its schema")


def bench_ops(device: str = "cpu", shapes=None, ops=None, backends=None, grad_dtypes=("fp32", "bf16"),
              reps: int = 100, progress: bool = True) -> list[Row]:
    """Time every (op, backend, shape, grad dtype) that can run here; the torch reference is always included."""
    dev = torch.device(device)
    shapes = shapes or (CUDA_SHAPES if dev.type == "cuda" else CPU_SHAPES)
    ops = ops or HOT_PATHS
    backends = backends or _dispatch.BACKENDS
    cases = [(op, r, c, dt) for op in ops for (r, c) in shapes for dt in grad_dtypes]
    rows: list[Row] = []
    iterator = cases
    if progress:
        from ._progress import progress_bar

        iterator = progress_bar(cases, desc=f"bench ops ({device})", unit="case")
    for op, r, c, dt in iterator:
        spec = SPECS[op]
        variant = "random" if dt == "fp32" else "grad_bf16"
        sample = spec.make(r, c, variant, torch.Generator(dev).manual_seed(0), dev)
        grad = sample.args[_grad_position(op)]  # per batch: not a whole-data-set buffer (ATAS, PGI)
        copy_ms = time_ms(lambda: grad.clone(), dev, reps)[0]
        floor_ms = copy_ms * spec.bytes_moved(sample) / (2 * grad.numel() * grad.element_size())
        timings = {}
        for backend in ("torch",) + tuple(b for b in backends if b != "torch"):
            if _reasons(backend, op, dev):
                continue
            impl = _compiled_reference(op) if backend == COMPILE else _dispatch.implementation(backend, op)
            try:
                timings[backend] = time_ms(lambda: impl(*sample.args, **sample.kwargs), dev, reps)
            except Exception as exc:  # noqa: BLE001 - a baseline that cannot compile this case is reported, not fatal
                if backend != COMPILE:
                    raise
                print(f"fastat bench ops: torch.compile({op}) failed at {r}x{c} {dt}: "
                      f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
        nbytes = spec.bytes_moved(sample)
        for backend, (med, p20, p80) in timings.items():
            vs_compile = timings[COMPILE][0] / med if COMPILE in timings else math.nan
            rows.append(Row(op, backend, r, c, dt, med, p20, p80, nbytes / med / 1e6, timings["torch"][0] / med,
                            copy_ms, med / floor_ms, vs_compile))
    return rows


def _compiled_reference(op: str) -> Callable:
    """A fresh ``torch.compile`` of the op's pure-PyTorch reference for one case (static shapes). Dynamo is reset
    first: its recompile limit counts per function, and past it the "compiled" baseline would silently run eager."""
    torch._dynamo.reset()
    return torch.compile(getattr(reference, op), dynamic=False)


def compare(rows: list[Row], old_rows: list[dict], threshold: float = REGRESSION) -> list[dict]:
    """The cases of ``rows`` whose median is more than ``threshold`` slower than the same (op, backend, shape, grad
    dtype) in ``old_rows`` (rows of an earlier ops.json/ops.csv), slowest first: {case..., old_ms, new_ms, ratio}."""
    def key(r) -> tuple:
        return (r["op"], r["backend"], int(r["rows"]), int(r["cols"]), r["grad_dtype"])

    old = {key(r): float(r["median_ms"]) for r in old_rows}
    worse = []
    for r in rows:
        k = key(asdict(r))
        if k in old and r.median_ms > old[k] * (1 + threshold):
            worse.append({**dict(zip(("op", "backend", "rows", "cols", "grad_dtype"), k)), "old_ms": old[k],
                          "new_ms": r.median_ms, "ratio": r.median_ms / old[k]})
    return sorted(worse, key=lambda w: -w["ratio"])


def read_rows(path: str | Path) -> list[dict]:
    """The rows of an earlier run: a results folder (its ops.json), an ops.json or an ops.csv."""
    path = Path(path)
    if path.is_dir():
        path = path / "ops.json"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark results at {str(path)!r} (a results folder, ops.json or ops.csv)")
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    try:
        return list(json.loads(path.read_text())["rows"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{str(path)!r} is not an ops.json of `fastat bench ops` ({exc})") from None


def _reasons(backend: str, op: str, device: torch.device) -> list[str]:
    """Why ``backend`` cannot run ``op`` on ``device`` (`_dispatch.not_supported_reasons`); empty when it can."""
    if backend == COMPILE:
        return []
    try:
        return _dispatch.not_supported_reasons(backend, op, device)
    except ImportError as exc:  # the triton backend's package is not installed
        return [f"{exc.name or 'its package'} is not installed"]


def skipped_backends(backends, ops, device: str | torch.device) -> dict[str, str]:
    """{backend: why} for each of ``backends`` that cannot run some of ``ops`` on ``device`` (torch always can):
    "on cpu: <reasons>" when it runs none of them, else "for <ops> on cpu: <reasons>"."""
    dev = torch.device(device)
    skipped = {}
    for backend in dict.fromkeys(b for b in backends if b != "torch"):
        why = {op: "; ".join(r) for op in ops if (r := _reasons(backend, op, dev))}
        if why:
            where = f"on {dev}" if len(why) == len(ops) else f"for {', '.join(why)} on {dev}"
            skipped[backend] = f"{where}: {'; '.join(dict.fromkeys(why.values()))}"
    return skipped


def markdown(rows: list[Row], env: dict[str, str]) -> str:
    head = (f"Measured {env['date']} on {env['device']} (torch {env['torch']}, triton {env.get('triton', '-')}, "
            f"fastat {env['git']}); median (and 20th–80th percentiles) of CUDA-event/`torch.utils.benchmark` "
            "timings.\n\n")
    compiled = any(math.isfinite(r.speedup_vs_compile) for r in rows)
    lines = ["| op | backend | shape (B × n) | grad | median ms | p20–p80 ms | GB/s | vs PyTorch | "
             + ("vs compile | " * compiled) + "× copy floor |", "|---|---|---|---|---|---|---|---|" + "---|" * compiled
             + "---|"]
    for r in rows:
        vs = (f"{r.speedup_vs_compile:.1f}× | " if math.isfinite(r.speedup_vs_compile) else "- | ") if compiled else ""
        lines.append(f"| {r.op} | {r.backend} | {r.rows} × {r.cols} | {r.grad_dtype} | {r.median_ms:.4f} | "
                     f"{r.p20_ms:.4f}–{r.p80_ms:.4f} | {r.gbps:.1f} | {r.speedup_vs_torch:.1f}× | "
                     f"{vs}{r.floor_ratio:.2f} |")
    return head + "\n".join(lines) + "\n"


def auto_choice(rows: list[Row]) -> dict[str, dict]:
    """Per op, the fused backend ("native" or "triton") with the lower geometric-mean median time over the cases both
    ran (every shape and grad dtype); ops measured on one fused backend only are left out. {op: {"backend": b,
    "geomean_ms": {backend: ms}, "cases": n}}."""
    by_case: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if r.backend in ("native", "triton"):
            by_case.setdefault((r.op, r.rows, r.cols, r.grad_dtype), {})[r.backend] = r.median_ms
    result: dict[str, dict] = {}
    for op in sorted({k[0] for k in by_case}):
        pairs = [v for k, v in by_case.items() if k[0] == op and len(v) == 2]
        if not pairs:
            continue
        geo = {b: math.exp(sum(math.log(max(v[b], 1e-9)) for v in pairs) / len(pairs)) for b in ("native", "triton")}
        result[op] = {"backend": min(geo, key=geo.get), "geomean_ms": geo, "cases": len(pairs)}
    return result


def plot_speedups(rows: list[Row], path: str | Path, env: dict[str, str]) -> Path:
    """A grouped bar chart of each fused backend's speed-up over PyTorch per op x shape (x grad dtype when several
    were measured), bars drawn from the 1× line on a log axis; the device and date in the title. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    cases = list(dict.fromkeys((r.op, r.rows, r.cols, r.grad_dtype) for r in rows))
    backends = list(dict.fromkeys(r.backend for r in rows if r.backend != "torch"))
    speedup = {(r.op, r.rows, r.cols, r.grad_dtype, r.backend): r.speedup_vs_torch for r in rows}
    dtypes = len({c[3] for c in cases}) > 1
    width = 0.8 / max(1, len(backends))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(cases) * max(1, len(backends)) + 2), 4.5))
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", lw=1, label="torch (1×)")
    values = [1.0]
    for j, backend in enumerate(backends):
        xs = [i for i, c in enumerate(cases) if (*c, backend) in speedup]
        ys = [speedup[(*cases[i], backend)] for i in xs]
        offsets = [x + (j - (len(backends) - 1) / 2) * width for x in xs]
        bars = ax.bar(offsets, [y - 1 for y in ys], width, bottom=1.0, color=f"C{j % 10}", label=backend)
        ax.bar_label(bars, labels=[f"{y:.1f}×" if y >= 0.95 else f"{y:.2g}×" for y in ys], fontsize=6, padding=1)
        values += ys
    if not backends:
        ax.text(0.5, 0.6, "only the torch baseline ran", transform=ax.transAxes, ha="center", color="gray")
    low, high = min(0.5, min(values) / 1.5), max(2.0, max(values) * 1.6)
    ax.set_ylim(low, high)
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if high / low < 1e3 else (1.0,)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{op}\n{r}×{c}" + (f" {dt}" if dtypes else "") for op, r, c, dt in cases], rotation=45,
                       ha="right", fontsize=7)
    ax.set_ylabel("speed-up vs PyTorch (log scale)")
    ax.set_title(f"fastat ops: speed-up vs PyTorch on {env['device']} ({env['date']})", fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(rows: list[Row], out_dir: str | Path, env: dict[str, str]) -> Path:
    """Write CSV, JSON, a Markdown table and the `plot_speedups` PNG under ``out_dir``/<date>-<device>; returns that
    folder."""
    slug = env["device"].replace(" ", "_").replace("/", "_")
    folder = Path(out_dir) / f"{env['date']}-{slug}"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "ops.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0]).keys()) + list(env)) if rows else None
        if writer:
            writer.writeheader()
            for r in rows:
                writer.writerow({**asdict(r), **env})
    strict = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(r).items()}
              for r in rows]  # valid JSON: a baseline that did not run is null
    (folder / "ops.json").write_text(json.dumps({"env": env, "rows": strict}, indent=2))
    (folder / "ops.md").write_text(markdown(rows, env))
    if rows:
        plot_speedups(rows, folder / "ops.png", env)
    choice = auto_choice(rows)
    if choice:  # "auto"'s per-op preference, for bench/make_table.py to install (ops/auto_cuda.json)
        (folder / "auto.json").write_text(json.dumps(
            {"device": env["device"], "date": env["date"], "torch": env.get("torch"), "triton": env.get("triton"),
             "choice": {op: c["backend"] for op, c in choice.items()}, "evidence": choice}, indent=2))
    return folder


def run(device: str, out: str | None, **kwargs) -> list[Row]:
    from .info import environment

    env = environment()
    env["date"] = _dt.date.today().isoformat()
    dev = torch.device(device)
    env["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else env["device"]
    rows = bench_ops(device, **kwargs)
    print(markdown(rows, env))
    if out:
        print(f"results written to {write_results(rows, out, env)}")
    return rows
