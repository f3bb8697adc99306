"""Compile every kernel launch the launchers make, for an NVIDIA GPU without one, and check the PTX for the numerics
the contracts need.

    python -m fastat_kernels._compile_check [--arch 90] [--all] [--list]      (TRITON_INTERPRET must be unset)

The launchers themselves (`pgd_step.pgd_step`, ...) run on meta tensors of real sizes (MNIST, CIFAR and ImageNet
batches, an odd size, one element, 70000 rows; fp32/bf16/fp16 and mixed dtypes; contiguous and channels_last; every
ZeroGrad quantile plan; every ATAS path; FGSM-PGI) while `JITFunction.run` only records each launch. Every recorded
launch, plus each autotune config of the autotuned kernels, is then specialised by Triton's own binder exactly as a GPU
launch would be (i32/i64 ints, ints equal to 1 as constexpr, 16-divisibility of ints and pointers). By default a
covering subset is compiled (~90 variants, about a minute): per kernel, every pointer-dtype signature, every int
specialisation, every constexpr flag set and every tile/num_warps config at least once. ``--all`` compiles every
distinct variant (~720, about 7 minutes on one core; run it before a GPU session when a kernel changed). Triton ships ptxas, so this catches
on a CPU-only machine what the interpreter cannot: code that fails only in the compiler, or only for some dtype,
config or alignment.

Checks: every launch disables FP contraction and its grid fits CUDA's limits (axes 1 and 2 at most 65535); in the PTX
the only fp32 FMA is the one in ZeroGrad's quantile lerp, min/max are the NaN-propagating forms, nothing flushes
subnormals, sqrt/division are IEEE (ATAS must use div.rn/sqrt.rn, FGSM-PGI div.rn) and shared memory fits the
target.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch

from . import _triton

_GRID_LIMITS = (2**31 - 1, 65535, 65535)
_SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}  # bytes of shared memory per block (opt-in maximum)
_FMAS = {"_zerograd_fused_kernel": 1, "_zerograd_tau_kernel": 1}  # fp32 FMAs per kernel (the quantile lerp)
_EPS, _ALPHA = 8 / 255, 2 / 255
_ATAS_KW = {"eps": _EPS, "c": 0.01, "beta": 0.5, "gamma_over_c": 16 / 255, "step_min": 4 / 255, "step_max": 14 / 255}
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
# (delta / delta_buf dtype, grad dtype, x dtype)
DTYPES = {"fp32": (F32, F32, F32), "bf16": (BF16, BF16, BF16), "fp16": (F16, F16, F16), "mixed": (F32, BF16, F16)}
# name -> (batch, sample shape, ATAS pad, ATAS examples N); meta tensors take no memory, so sizes are the real ones
SIZES = {
    "one": (3, (1, 1, 1), 0, 1),
    "odd": (5, (3, 5, 7), 1, 7),
    "mnist": (128, (1, 28, 28), 2, 60000),
    "cifar": (512, (3, 32, 32), 4, 50000),
    "imagenet": (64, (3, 224, 224), 4, 60000),  # ATAS buffer: 60000 x 3 x 232 x 232 (> 2^31 elements)
    "many_rows": (70000, (1, 4, 4), 1, 70000),  # more rows than a grid's axis 1 or 2 may have
}
QUANTILES = (0.0, 0.35, 0.5, 0.7)  # ZeroGrad plans: no hi, lerp from a, lerp from b (w = 0.5), and a w < 0.5 lerp


@dataclass
class Launch:
    kernel: object  # triton.runtime.jit.JITFunction
    args: tuple
    kwargs: dict
    grid: object
    where: str


def _meta(shape, dtype, channels_last=False) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, device="meta", memory_format=fmt)


def _calls() -> Iterator[tuple[str, Callable[[], object]]]:
    """(description, launcher call) for every scenario; the calls only record launches."""
    from . import atas, multigrad_step, pgd_step, pgi, zerograd_step

    for size, (rows, shape, pad, examples) in SIZES.items():
        layouts = (False, True) if shape[0] > 1 else (False,)
        for dname, (dd, gd, xd) in DTYPES.items():
            for cl in layouts:
                where = f"{size} {dname}{' channels_last' if cl else ''}"
                full = (rows, *shape)
                delta, grad, x = _meta(full, dd, cl), _meta(full, gd, cl), _meta(full, xd, cl)
                flags = torch.empty(rows, dtype=torch.bool, device="meta")
                for active in (None, flags, flags[:1].expand(rows)):
                    yield where, partial(pgd_step.pgd_step, delta, grad, x, _EPS, _ALPHA, active)
                for starts in (1, 3):
                    grads = torch.stack([_meta(full, gd, cl)] * starts)
                    yield where, partial(multigrad_step.multigrad_step, grads, x, _EPS, _ALPHA, None)
                for q in QUANTILES:
                    yield f"{where} q={q}", partial(zerograd_step.zerograd_step, delta, grad, x, _EPS, _ALPHA, q)
                buf = _meta((examples, shape[0], shape[1] + 2 * pad, shape[2] + 2 * pad), dd)
                v_buf = torch.empty(examples, dtype=F32, device="meta")
                index = torch.empty(rows, dtype=torch.int64, device="meta")
                offsets = torch.empty((rows, 2), dtype=torch.int64, device="meta")
                x_adv = _meta(full, xd, cl)
                yield where, partial(atas.atas_gather, buf, index, offsets, flags, x)
                for warmup in (False, True):
                    yield f"{where} warmup={warmup}", partial(atas.atas_step, buf, v_buf, index, offsets, flags, grad,
                                                              x_adv, x, warmup=warmup, **_ATAS_KW)
                grad_l1 = torch.empty((), dtype=F32, device="meta")
                yield where, partial(pgi.pgi_step, buf, _meta(buf.shape, dd), index, offsets, flags, grad, grad_l1,
                                     x_adv, x, eps=_EPS, decay=0.3)


@contextlib.contextmanager
def _recording(launches: list[Launch], where: list[str]) -> Iterator[None]:
    """Kernels launched inside are recorded (with the launchers' default tiles: autotuning off), not run."""
    from triton.runtime.jit import JITFunction

    real_run, env = JITFunction.run, os.environ.get("FASTAT_TRITON_AUTOTUNE")

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, args, kwargs, grid, where[0]))

    JITFunction.run = record
    os.environ["FASTAT_TRITON_AUTOTUNE"] = "0"
    try:
        yield
    finally:
        JITFunction.run = real_run
        if env is None:
            os.environ.pop("FASTAT_TRITON_AUTOTUNE")
        else:
            os.environ["FASTAT_TRITON_AUTOTUNE"] = env


def record_launches() -> list[Launch]:
    """Every launch of every scenario, plus the same launch under each autotune config of its kernel."""
    from triton.runtime.autotuner import Autotuner

    from . import atas, multigrad_step, pgd_step, pgi, zerograd_step

    launches: list[Launch] = []
    where = [""]
    with _recording(launches, where):
        for where[0], call in _calls():
            call()
    tuners = {id(t.fn): t for m in (atas, multigrad_step, pgd_step, pgi, zerograd_step) for t in vars(m).values()
              if isinstance(t, Autotuner)}
    tuned = []
    for launch in launches:
        for config in getattr(tuners.get(id(launch.kernel)), "configs", ()):
            kwargs = {**launch.kwargs, **config.all_kwargs()}
            tuned.append(Launch(launch.kernel, launch.args, kwargs, launch.grid, f"{launch.where} {config}"))
    return launches + tuned


def _grid_problems(launch: Launch) -> list[str]:
    kernel = launch.kernel
    bound = inspect.signature(kernel.fn).bind(*launch.args, **{k: v for k, v in launch.kwargs.items()
                                                               if k in kernel.arg_names})
    grid = launch.grid(dict(bound.arguments)) if callable(launch.grid) else launch.grid
    problems = []
    if any(g > limit for g, limit in zip(grid, _GRID_LIMITS)) or len(grid) > 3:
        problems.append(f"{kernel.__name__} [{launch.where}]: grid {tuple(grid)} exceeds CUDA's {_GRID_LIMITS}")
    if launch.kwargs.get("enable_fp_fusion", True):
        problems.append(f"{kernel.__name__} [{launch.where}]: launched without enable_fp_fusion=False")
    return problems


def check_ptx(name: str, ptx: str, meta: dict) -> list[str]:
    """What the contracts forbid in a kernel's PTX (``meta``: its constexprs by name)."""
    problems = []
    fmas = _FMAS.get(name, 0)
    if ptx.count("fma.rn.f32") != fmas or re.search(r"\bmad(\.rn)?\.f32", ptx):
        problems.append(f"expected {fmas} fp32 FMA, found {ptx.count('fma.rn.f32')} (contraction?)")
    if re.search(r"\b(max|min)(\.ftz)?\.f32", ptx):
        problems.append("a min/max that does not propagate NaN")
    if re.search(r"\.ftz\b", ptx):
        problems.append("an instruction that flushes subnormals (.ftz)")
    if re.search(r"\b(div|sqrt|rcp)\.(approx|full)", ptx):
        problems.append("approximate sqrt/division")
    if name == "_atas_step_kernel" and not meta.get("WARMUP") and ("div.rn.f32" not in ptx or "sqrt.rn.f32" not in ptx):
        problems.append("IEEE div.rn/sqrt.rn missing")
    if name == "_pgi_step_kernel" and "div.rn.f32" not in ptx:
        problems.append("IEEE div.rn missing")
    return problems


def _specialise(launch: Launch, backend):
    """(ASTSource, options) of ``launch`` as `JITFunction.run` builds them on a GPU (Triton 3.6 to 3.9 internals)."""
    from triton.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = {**launch.kwargs, "debug": False}
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, *binder(*launch.args, **kwargs))
    return ASTSource(kernel, signature, constexprs, attrs), options


def _features(launch: Launch, src, options) -> set:
    """What a variant exercises, for the covering subset: its pointer dtypes, int specialisation, constexpr flags and
    tile config (each tagged with the kernel)."""
    names = launch.kernel.arg_names
    const = {names[k[0]]: v for k, v in src.constants.items()}
    sig = src.signature
    ints = tuple((k, t, const.get(k)) for k, t in sig.items() if not t.startswith("*") and not k.isupper())
    flags = tuple((k, v) for k, v in const.items() if k.isupper() and k not in ("BLOCK", "INTERPRET"))
    name = launch.kernel.__name__
    return {(name, "ptr", tuple(t for t in sig.values() if t.startswith("*"))), (name, "ints", ints,
            tuple(sorted(src.attrs))), (name, "flags", flags), (name, "tile", const.get("BLOCK"), options.num_warps)}


def _unlaunched_kernels(launches: list[Launch]) -> list[str]:
    """Kernels defined in the op modules that no scenario launches (add a scenario to `_calls`)."""
    from triton.runtime.jit import JITFunction

    from . import atas, multigrad_step, pgd_step, pgi, zerograd_step

    launched = {id(launch.kernel) for launch in launches}
    return [f"{m.__name__}.{name} is never launched by the scenarios" for m in (atas, multigrad_step, pgd_step, pgi,
            zerograd_step) for name, fn in vars(m).items() if isinstance(fn, JITFunction) and name.endswith("_kernel")
            and id(fn) not in launched]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80, 90 (default 90)")
    parser.add_argument("--all", action="store_true", help="compile every distinct variant, not a covering subset")
    parser.add_argument("--list", action="store_true", help="print the variants instead of compiling them")
    args = parser.parse_args(argv)
    if _triton.interpret():
        print("_compile_check: unset TRITON_INTERPRET (it compiles for a GPU)", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    target = GPUTarget("cuda", args.arch, 32)
    backend = make_backend(target)
    launches = record_launches()
    problems, variants, covered, counts = _unlaunched_kernels(launches), {}, set(), {}
    for launch in launches:
        problems += _grid_problems(launch)
        src, options = _specialise(launch, backend)
        key = (src.hash(), options.num_warps, options.num_stages, options.num_ctas, options.enable_fp_fusion)
        features = _features(launch, src, options)
        if key not in variants and (args.all or not features <= covered):
            variants[key] = (launch, src, options)
            covered |= features
    for launch, src, options in variants.values():
        name = launch.kernel.__name__
        counts[name] = counts.get(name, 0) + 1
        constexprs = {launch.kernel.arg_names[k[0]]: v for k, v in src.constants.items()}
        label = f"{name} [{launch.where}] {src.signature} {constexprs} num_warps={options.num_warps}"
        if args.list:
            print(label)
            continue
        try:
            compiled = triton.compile(src, target=target, options=options.__dict__)
        except Exception as exc:  # noqa: BLE001  (report every failing variant, not just the first)
            problems.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        problems += [f"{label}: {p}" for p in check_ptx(name, compiled.asm["ptx"], constexprs)]
        if compiled.metadata.shared > _SHARED_LIMIT.get(args.arch, 49152):
            problems.append(f"{label}: {compiled.metadata.shared} bytes of shared memory")
    for name, count in sorted(counts.items()):
        print(f"{'listed' if args.list else 'compiled'} {count:4d} variants of {name} for sm_{args.arch}")
    for problem in problems:
        print("FAIL", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
