"""Builds fastat's CUDA kernels (csrc/cuda/*.cu) for the CPU emulator and calls them on CPU tensors.

The kernel sources are compiled unmodified except for three mechanical rewrites C++ needs (`k<<<cfg>>>(args)` becomes
`::emu::launch(k, ::emu::Config(cfg), args)`, `extern __shared__ T a[];` becomes a pointer to the block's dynamic
shared memory, inline PTX without outputs becomes a no-op), a call after each `__shared__` declaration (so the
emulator can fill it with garbage per block and learn the kernel's static shared memory), and named anonymous
namespaces, so that the launch log and error messages can name the kernels. See include/emu_cuda.h for what is
emulated and checked.

    lib = build()                      # cached by a hash of the sources and flags
    out = zerograd_step(lib, delta, grad, x, eps, alpha, q)

Each wrapper mirrors csrc/cuda/bindings.cpp on CPU tensors (same layouts, dtype tags and scalar roundings) and raises
EmulatorError with the emulator's message when a kernel fails (deadlock, divergent barrier, trap, overrun, ...).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"
DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
CUDA_SUCCESS = 0


class EmulatorError(RuntimeError):
    """A kernel failed under the emulator, or a launcher returned an error."""


# ------------------------------------------------------------------------------------------------------- rewriting
_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:\s*<[^<>;(){}]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+([\w:]+)\s+(\w+)\s*\[\s*\]\s*;")
_SHARED = re.compile(r"(?<![\w#])__shared__\s+([A-Za-z_][\w:<>, ]*?)\s+(\w+)\s*((?:\[[^\]]+\])*)\s*;")
_ASM = re.compile(r"\basm\s+(?:volatile\s*)?\(")
_ANON = re.compile(r"namespace\s*\{")


def _matching_paren(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced parentheses after a kernel launch")


def rewrite(source: str, stem: str) -> str:
    """The C++ the emulator compiles for one CUDA source file."""
    out, pos = [], 0
    for m in _LAUNCH.finditer(source):
        if m.start() < pos:
            continue
        close = _matching_paren(source, m.end() - 1)
        args = source[m.end():close].strip()
        out.append(source[pos:m.start()])
        call = f"::emu::launch({m.group(1)}, ::emu::Config({m.group(2)}){', ' + args if args else ''})"
        # keep the line count, so that the emulator's messages name the kernel source's lines
        call += "\n" * (source.count("\n", m.start(), close + 1) - call.count("\n"))
        out.append(call)
        pos = close + 1
    out.append(source[pos:])
    text = "".join(out)
    text = _EXTERN_SHARED.sub(r"\1* \2 = ::emu::dynamic_smem<\1>();", text)
    text = _SHARED.sub(r"static thread_local \1 \2\3; ::emu::shared_decl(&\2, sizeof(\2));", text)
    for m in _ASM.finditer(text):  # dropped: only statements without results (prefetches, fences) may be
        body = text[m.end():_matching_paren(text, m.end() - 1)]
        if re.search(r':\s*"[=+]', body):
            raise EmulatorError(f"{stem}: inline asm with output operands cannot be emulated: asm({body[:80]}...)")
    text = _ASM.sub("EMU_ASM(", text)
    ns = f"emu_anon_{re.sub(r'[^A-Za-z0-9_]', '_', stem)}"
    text = _ANON.sub(f"namespace {ns} {{}} using namespace {ns}; namespace {ns} {{", text)
    return text


# -------------------------------------------------------------------------------------------------------- building
def _rank64() -> int:
    from fastat.ops.reference import QUANTILE_RANK_FP64

    return int(QUANTILE_RANK_FP64)


def asan_enabled() -> bool:
    """FASTAT_EMU_ASAN=1: build with AddressSanitizer (the process must preload libasan, see test_build_variants.py)."""
    return os.environ.get("FASTAT_EMU_ASAN", "0") == "1"


def contract_enabled() -> bool:
    """FASTAT_EMU_CONTRACT=1: let g++ fuse a*b+c into FMAs (-ffp-contract=fast -mfma) as nvcc does by default, so
    that an unprotected product-sum in an exact kernel shows as a mismatch (see test_build_variants.py)."""
    return os.environ.get("FASTAT_EMU_CONTRACT", "0") == "1"


def _flags() -> list[str]:
    contract = ["-ffp-contract=fast", "-mfma"] if contract_enabled() else ["-ffp-contract=off"]
    flags = ["-std=c++20", "-O1", "-fPIC", "-pthread", *contract, "-fno-fast-math", "-Wall",
             "-Wno-unknown-pragmas", "-Wno-unused-function", "-Wno-unused-variable",
             f"-DFASTAT_QUANTILE_RANK64={_rank64()}"]
    if asan_enabled():
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer", "-DFASTAT_EMU_ASAN=1"]
    return flags


def _sources() -> list[Path]:
    files = sorted((CSRC / "cuda").glob("*.cu")) + sorted((CSRC / "cuda").glob("*.cuh"))
    files += sorted((CSRC / "cuda").glob("*.h")) + sorted(CSRC.glob("*.h"))
    files += [HERE / "emu_runtime.cpp", HERE / "capi.cpp", HERE / "selftest.cu", Path(__file__)]
    files += sorted((HERE / "include").glob("*.h"))
    return files


def _cache_root() -> Path:
    """FASTAT_EMU_CACHE, else ~/.cache/fastat/cuda_emu, else (not writable) the temporary directory."""
    env = os.environ.get("FASTAT_EMU_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastat" / "cuda_emu"
    try:
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"fastat-cuda-emu-{os.getuid()}"


_PROBE = """
#include <source_location>
#include <ucontext.h>
int main() { _Float16 h = static_cast<_Float16>(1.5f); ucontext_t c; getcontext(&c);
             return static_cast<int>(std::source_location::current().line()) > 0 && h > 1 ? 0 : 1; }
"""


def toolchain_problem(compiler: str | None = None) -> str | None:
    """Why this machine cannot build the emulator (no C++ compiler, no C++20 <source_location>, no _Float16, no
    ucontext), or None. A failure to compile the kernels themselves is not a toolchain problem: it is a bug."""
    compiler = compiler or os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler}) to build the CUDA emulator"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text(_PROBE)
        res = subprocess.run([compiler, "-std=c++20", str(src), "-o", str(Path(tmp) / "probe")], capture_output=True,
                             text=True)
    if res.returncode != 0:
        return f"{compiler} cannot build the CUDA emulator (needs C++20 <source_location>, _Float16, ucontext)"
    return None


def build(verbose: bool = False) -> ctypes.CDLL:
    """Compiles (or reuses) the emulated kernels and returns the loaded library."""
    compiler = os.environ.get("CXX", "g++")
    problem = toolchain_problem(compiler)
    if problem:
        raise EmulatorError(problem)
    digest = hashlib.sha256()
    for f in _sources():
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    digest.update(" ".join([compiler, version] + _flags()).encode())
    out_dir = _cache_root() / digest.hexdigest()[:16]
    lib_path = out_dir / "libfastat_cuda_emu.so"
    if not lib_path.exists():
        _prune(_cache_root(), keep=out_dir.name)
        work = out_dir.with_name(f"{out_dir.name}.tmp{os.getpid()}-{threading.get_ident()}")
        try:
            _compile(compiler, work, lib_path, verbose)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return _load(lib_path)


def _prune(root: Path, keep: str, max_entries: int = 8) -> None:
    """Drops the oldest cached builds beyond `max_entries` (and leftovers of interrupted builds over a day old)."""
    try:
        entries = [p for p in root.iterdir() if p.is_dir() and p.name != keep]
    except OSError:
        return
    now = time.time()
    stale = [p for p in entries if ".tmp" in p.name and now - p.stat().st_mtime > 86400]
    builds = sorted((p for p in entries if ".tmp" not in p.name), key=lambda p: p.stat().st_mtime)
    for p in stale + builds[:max(0, len(builds) - max_entries + 1)]:
        shutil.rmtree(p, ignore_errors=True)


def _compile(compiler: str, work: Path, lib_path: Path, verbose: bool) -> None:
    """Rewrites the kernel sources into `work`, compiles them with the runtime, links lib_path."""
    shutil.rmtree(work, ignore_errors=True)
    (work / "csrc" / "cuda").mkdir(parents=True)
    for f in CSRC.glob("*.h"):
        shutil.copy(f, work / "csrc" / f.name)
    units = []
    for f in sorted((CSRC / "cuda").iterdir()):
        if f.suffix in (".cu", ".cuh", ".h"):
            (work / "csrc" / "cuda" / f.name).write_text(rewrite(f.read_text(), f.stem))
        if f.suffix == ".cu":
            units.append(work / "csrc" / "cuda" / f.name)
    selftest = work / "selftest.cu"
    selftest.write_text(rewrite((HERE / "selftest.cu").read_text(), "selftest"))
    units += [HERE / "emu_runtime.cpp", HERE / "capi.cpp", selftest]
    include = ["-I", str(HERE / "include"), "-I", str(work / "csrc" / "cuda")]

    def compile_one(src: Path) -> Path:
        obj = work / (src.stem + ".o")
        cmd = [compiler, *_flags(), *include, "-x", "c++", "-c", str(src), "-o", str(obj)]
        if verbose:
            print(" ".join(cmd), file=sys.stderr)
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise EmulatorError(f"compiling {src.name} for the CUDA emulator failed:\n{res.stderr[-6000:]}")
        return obj

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        objects = list(pool.map(compile_one, units))
    tmp_lib = work / lib_path.name
    sanitize = ["-fsanitize=address"] if asan_enabled() else []
    res = subprocess.run([compiler, "-shared", "-pthread", *sanitize, *map(str, objects), "-o", str(tmp_lib)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise EmulatorError(f"linking the CUDA emulator failed:\n{res.stderr[-6000:]}")
    lib_path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp_lib, lib_path)  # atomic: concurrent builders (xdist, two sessions) both end up with a whole file


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    p, i, i64, d, u64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_double, ctypes.c_uint64
    sig = {
        "emu_zerograd_step": [p, p, p, p, i, i, i64, i64, d, d, d],
        "emu_multigrad_step": [p, p, p, i, i, i64, i64, i64, d, d],
        "emu_pgd_step": [p, p, p, p, p, i, i, i64, i64, d, d],
        "emu_atas_gather": [p, i, p, p, p, p, p, i, p],
        "emu_atas_step": [p, i, p, p, p, p, p, i, p, p, p, i, p, p, i, p],
        "emu_uniform_init": [p, p, i, i64, d, u64, u64],
        "emu_configure": [i, i, i, i, i, i, i64, i],
        "emu_take_failure": [ctypes.c_char_p, i],
        "emu_take_log": [ctypes.c_char_p, i],
        "emu_selftest": [i, p, i],
        "emu_round_trip": [p, p, i64, i],
        "emu_uniform_init_captured": [p, p, i, i64, d, p, p, u64],
    }
    for name, argtypes in sig.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = ctypes.c_int
    return lib


# ------------------------------------------------------------------------------------------------------ the device
def configure(lib, *, sm_count: int = 132, smem_optin: int = 227 * 1024, clusters: bool = True,
              max_active_clusters: int = 1 << 20, refuse_cluster_launch: bool = False,
              check_call_sites: bool = True, schedule_seed: int | None = None, ptx_version: int = 0) -> None:
    """Sets what the emulated device answers (defaults: an H100/H200-like sm_90 part) and clears its opt-ins.

    schedule_seed: 0 runs a block's threads in index order between synchronisation points; another value shuffles
    that order every round (a missing barrier then shows as a wrong result under some seeds); None keeps the seed
    `lib` carries (a test's device fixture), else 0. ptx_version: what cudaFuncGetAttributes reports as the
    kernels' PTX version (0: 90 with clusters, 80 without; 80 with clusters = a build for sm_80 JIT-run on an H100)."""
    if schedule_seed is None:
        schedule_seed = getattr(lib, "seed", 0)
    lib.emu_configure(sm_count, smem_optin, int(clusters), max_active_clusters, int(refuse_cluster_launch),
                      int(check_call_sites), schedule_seed, ptx_version)


def take_log(lib) -> list[str]:
    """The launches since the last call: 'kernel<...> grid=G block=T smem=S cluster=K' lines."""
    buf = ctypes.create_string_buffer(1 << 20)
    lib.emu_take_log(buf, len(buf))
    return buf.value.decode().splitlines()


def _check(lib, what: str, err: int) -> None:
    buf = ctypes.create_string_buffer(1 << 14)
    n = lib.emu_take_failure(buf, len(buf))
    if n:
        raise EmulatorError(f"{what}: {buf.value.decode()}")
    if err != CUDA_SUCCESS:
        raise EmulatorError(f"{what}: launcher returned cudaError {err}")


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


_GUARD = 64  # elements of poison on each side of every buffer a kernel writes


class _Guarded:
    """A dense tensor shaped and strided like `like`, inside a buffer with _GUARD elements on each side: filled with
    NaN (or `init`'s values), so unwritten elements show up as NaN and writes out of bounds as changed guards."""

    def __init__(self, like: torch.Tensor, init: torch.Tensor | None = None):
        fill = float("nan") if like.dtype.is_floating_point else -1
        self.big = torch.full((like.numel() + 2 * _GUARD,), fill, dtype=like.dtype)
        self.before = self.big.clone()
        self.t = self.big[_GUARD:_GUARD + like.numel()].as_strided(like.shape, like.stride())
        if init is not None:
            self.t.copy_(init)

    def check(self, what: str) -> torch.Tensor:
        bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[self.big.element_size()]
        for lo, hi in ((0, _GUARD), (self.big.numel() - _GUARD, self.big.numel())):
            if not torch.equal(self.big[lo:hi].view(bits), self.before[lo:hi].view(bits)):
                raise EmulatorError(f"{what}: a kernel wrote outside the buffer (guard elements changed)")
        return self.t


def _row_format(t: torch.Tensor) -> torch.memory_format:
    # bindings.cpp (common.h row_format): channels_last stays channels_last for 4-D tensors, else contiguous
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _rows(t: torch.Tensor) -> tuple[int, int]:
    """(batch, row_numel) of a per-row operand, as bindings.cpp passes them."""
    return (t.shape[0], t.numel() // t.shape[0]) if t.shape[0] > 0 else (0, 0)


# ------------------------------------------------------------------------------------------------------------ ops
def zerograd_step(lib, delta, grad, x, eps, alpha, q):
    fmt = _row_format(delta)
    d, g, xc = (t.contiguous(memory_format=fmt) for t in (delta, grad, x))
    out = _Guarded(d)
    batch, n = _rows(d)
    _check(lib, "zerograd_step", lib.emu_zerograd_step(_ptr(d), _ptr(g), _ptr(xc), _ptr(out.t), DTYPES[d.dtype],
                                                       DTYPES[g.dtype], batch, n, eps, alpha, q))
    return out.check("zerograd_step")


def pgd_step(lib, delta, grad, x, eps, alpha, active=None):
    fmt = _row_format(delta)
    d, g, xc = (t.contiguous(memory_format=fmt) for t in (delta, grad, x))
    act = None if active is None else active.contiguous()
    out = _Guarded(d)
    batch, n = _rows(d)
    _check(lib, "pgd_step", lib.emu_pgd_step(_ptr(d), _ptr(g), _ptr(xc), _ptr(act), _ptr(out.t), DTYPES[d.dtype],
                                             DTYPES[g.dtype], batch, n, eps, alpha))
    return out.check("pgd_step")


def multigrad_step(lib, grads, x, eps, alpha, threshold=None):
    fmt = _row_format(x)
    g = grads.permute(0, 1, 3, 4, 2).contiguous() if fmt == torch.channels_last else grads.contiguous()
    xc = x.contiguous(memory_format=fmt)
    out = _Guarded(xc)
    starts = grads.shape[0]
    th = starts if threshold is None else threshold
    _check(lib, "multigrad_step", lib.emu_multigrad_step(_ptr(g), _ptr(xc), _ptr(out.t), DTYPES[xc.dtype],
                                                         DTYPES[g.dtype], starts, xc.numel(), 2 * th - starts, eps,
                                                         alpha))
    return out.check("multigrad_step")


def _atas_shape(x, delta_buf):
    s = (x.shape[0], x.shape[1], x.shape[2], x.shape[3], delta_buf.shape[0], delta_buf.shape[2], delta_buf.shape[3])
    return (ctypes.c_int64 * 7)(*s)


def atas_gather(lib, delta_buf, index, offsets, flips, x):
    xc, idx, off, fl = x.contiguous(), index.contiguous(), offsets.contiguous(), flips.contiguous()
    buf = delta_buf.contiguous()  # held in a variable: the pointer must outlive the call
    out = _Guarded(xc)
    _check(lib, "atas_gather", lib.emu_atas_gather(_ptr(buf), DTYPES[delta_buf.dtype], _ptr(idx),
                                                   _ptr(off), _ptr(fl), _ptr(xc), _ptr(out.t), DTYPES[xc.dtype],
                                                   _atas_shape(xc, delta_buf)))
    return out.check("atas_gather")


def atas_step(lib, delta_buf, v_buf, index, offsets, flips, grad, x_adv, x, eps, c, beta, gamma_over_c, step_min,
              step_max, warmup=False, path: list | None = None):
    """As fastat.ops.atas_step (delta_buf and v_buf updated in place); `path` gets 'fused' or 'split' appended."""
    g, xa, xc = grad.contiguous(), x_adv.contiguous(), x.contiguous()
    idx, off, fl = index.contiguous(), offsets.contiguous(), flips.contiguous()
    out = _Guarded(xa)
    buf = _Guarded(delta_buf.contiguous(), delta_buf)  # in place, between guards; copied back below
    v = _Guarded(v_buf.contiguous(), v_buf)
    scalars = (ctypes.c_double * 6)(eps, c, beta, gamma_over_c, step_min, step_max)
    taken = ctypes.c_int(0)
    err = lib.emu_atas_step(_ptr(buf.t), DTYPES[delta_buf.dtype], _ptr(v.t), _ptr(idx), _ptr(off), _ptr(fl),
                            _ptr(g), DTYPES[g.dtype], _ptr(xa), _ptr(xc), _ptr(out.t), DTYPES[xc.dtype],
                            _atas_shape(xc, delta_buf), scalars, int(warmup), ctypes.byref(taken))
    _check(lib, "atas_step", err)
    delta_buf.copy_(buf.check("atas_step delta_buf"))
    v_buf.copy_(v.check("atas_step v_buf"))
    out = out.check("atas_step")
    if path is not None:
        path.append({1: "fused", 2: "split"}.get(taken.value, "none"))
    return out


def uniform_init(lib, x, eps, seed, offset):
    xc = x.contiguous()
    out = _Guarded(xc)
    _check(lib, "uniform_init", lib.emu_uniform_init(_ptr(xc), _ptr(out.t), DTYPES[xc.dtype], xc.numel(), eps, seed,
                                                     offset))
    return out.check("uniform_init")
