"""Compile every kernel variant for an NVIDIA GPU without one, and check the PTX for the numerics the contracts need.

    python -m fastat_kernels._compile_check [--arch 90]       (TRITON_INTERPRET must be unset)

Triton ships ptxas, so this catches what the interpreter cannot (code that only fails in the compiler, such as
constexpr misuse) on a CPU-only machine. The PTX checks: the only fp32 FMA is the one in ZeroGrad's quantile lerp (one
per row; every launch disables contraction), min/max are the NaN-propagating forms, and ATAS uses IEEE sqrt/division.
Launch signatures are spelled out here (pointer and scalar types per argument), so keep them in step with the kernels.
"""

from __future__ import annotations

import argparse
import re
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import atas, multigrad_step, pgd_step, zerograd_step

_FLOATS = {"eps", "alpha", "coef", "min_votes", "c_scale", "beta", "one_minus_beta", "gamma_over_c", "step_min",
           "step_max"}
_POINTERS = {"index_ptr": "*i64", "offsets_ptr": "*i64", "flips_ptr": "*u8", "active_ptr": "*u8", "part_ptr": "*fp64",
             "tau_ptr": "*fp32", "v_ptr": "*fp32", "v_old_ptr": "*fp32"}
_ATAS = {"CH": 3, "H": 32, "W": 32, "PAD2": 8}


def _variants():
    """(kernel, constexprs, num_warps, fp32 FMAs expected) for every code path the launchers use."""
    yield pgd_step._pgd_step_kernel, {"HAS_ACTIVE": True, "BLOCK": 2048}, 8, 0
    yield pgd_step._pgd_step_kernel, {"HAS_ACTIVE": False, "BLOCK": 1024}, 4, 0
    yield multigrad_step._multigrad_step_kernel, {"STARTS": 3, "BLOCK": 2048}, 8, 0
    for use_hi in (False, True):
        yield zerograd_step._zerograd_fused_kernel, {"N": 3072, "USE_HI": use_hi, "NEED_HI": True, "BLOCK": 4096}, 8, 1
    yield zerograd_step._zerograd_fused_kernel, {"N": 3, "USE_HI": False, "NEED_HI": False, "BLOCK": 128}, 4, 1
    yield zerograd_step._zerograd_tau_kernel, {"N": 150528, "USE_HI": False, "NEED_HI": True, "BLOCK": 8192}, 16, 1
    yield zerograd_step._zerograd_apply_kernel, {"BLOCK": 2048}, 8, 0
    yield atas._atas_gather_kernel, {**_ATAS, "BLOCK": 2048}, 8, 0
    yield atas._atas_partial_kernel, {"CH": 3, "H": 224, "W": 224, "BLOCK": 2048}, 8, 0
    for split in (False, True):
        for warmup in (False, True):
            meta = {**_ATAS, "WARMUP": warmup, "SPLIT": split, "TILES_P2": 4 if split else 1, "BLOCK": 1024}
            yield atas._atas_step_kernel, meta, 4, 0


def _signature(fn, constexprs: dict, data: str) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = _POINTERS.get(name, f"*{data}")
        else:
            sig[name] = "fp32" if name in _FLOATS else "i64" if name.startswith("s") else "i32"
    return sig


def _check_ptx(name: str, ptx: str, fmas: int, meta: dict) -> list[str]:
    problems = []
    if ptx.count("fma.rn.f32") != fmas or re.search(r"\bmad(\.rn)?\.f32", ptx):
        problems.append(f"{name}: expected {fmas} fp32 FMA, found {ptx.count('fma.rn.f32')} (contraction?)")
    if re.search(r"\b(max|min)(\.ftz)?\.f32", ptx):
        problems.append(f"{name}: a min/max that does not propagate NaN")
    if re.search(r"\b(div|sqrt|rcp)\.(approx|full)", ptx):
        problems.append(f"{name}: approximate sqrt/division")
    if name == "_atas_step_kernel" and not meta["WARMUP"] and ("div.rn.f32" not in ptx or "sqrt.rn.f32" not in ptx):
        problems.append(f"{name}: IEEE div.rn/sqrt.rn missing")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80, 90 (default 90)")
    args = parser.parse_args(argv)
    target = GPUTarget("cuda", args.arch, 32)
    problems = []
    for fn, meta, warps, fmas in _variants():
        meta = {**meta, "INTERPRET": False}
        for data in ("fp32", "bf16"):
            src = ASTSource(fn=fn, signature=_signature(fn, meta, data), constexprs=meta)
            try:
                kernel = triton.compile(src, target=target, options={"num_warps": warps, "enable_fp_fusion": False})
            except Exception as exc:  # report every failing variant, not just the first
                problems.append(f"{fn.__name__} {meta} {data}: {type(exc).__name__}: {exc}")
                continue
            problems += _check_ptx(fn.__name__, kernel.asm["ptx"], fmas, meta)
        print(f"compiled {fn.__name__} {meta}")
    for problem in problems:
        print("FAIL", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
