"""Builds fastat's CUDA kernels (csrc/cuda/*.cu) for the CPU emulator and calls them on CPU tensors.

The kernel sources are compiled unmodified except for three mechanical rewrites C++ needs (`k<<<cfg>>>(args)` becomes
`::emu::launch(k, ::emu::Config(cfg), args)`, `extern __shared__ T a[];` becomes a pointer to the block's dynamic
shared memory, inline PTX without outputs becomes a no-op), a call after each `__shared__` declaration (so the
emulator can fill it with garbage per block and learn the kernel's static shared memory), and named anonymous
namespaces, so that the launch log and error messages can name the kernels. See include/emu_cuda.h for what is
emulated and checked.

The binding, csrc/cuda/bindings.cpp, is compiled too, against torch's headers and the stand-ins of include/c10/cuda
and include/ATen/cuda (torch_shim.cpp), with its kernels registered as the CPU kernels of `fastat_emu::<op>` (the
`fastat::` schemas and fakes): so the tests call the kernels through the code a GPU runs, from the argument checks
and layout handling to the launchers' arguments (the CUDA stream, device guard and generator are stand-ins: see
include/c10/cuda and include/ATen/cuda).

    lib = build()                      # cached by a hash of the sources, flags and torch version
    out = zerograd_step(lib, delta, grad, x, eps, alpha, q)      # torch.ops.fastat_emu.zerograd_step, guarded

The wrappers arm a guarded CPU allocator for the call (the binding's outputs and copies start as NaN and sit between
NaN guard bytes) and raise EmulatorError with the emulator's message when a kernel fails (deadlock, divergent barrier,
trap, overrun, a write outside a tensor, ...).
"""

from __future__ import annotations

import contextlib
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
KERNELS_LIB = "libfastat_cuda_emu.so"  # the kernels, the emulator's runtime, capi.cpp, selftest.cu
OPS_LIB = "libfastat_cuda_emu_ops.so"  # csrc/cuda/bindings.cpp and torch_shim.cpp, registering fastat_emu::<op>
NAMESPACE = "fastat_emu"


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


_IMPL_BLOCK = re.compile(r"^TORCH_LIBRARY_IMPL\(fastat, CUDA, m\)", re.M)


def rewrite_bindings(source: str) -> str:
    """csrc/cuda/bindings.cpp as the emulator builds it: its kernels are registered as the CPU kernels of
    `fastat_emu::<op>` (the same schemas as `fastat::`), and the check that operands are CUDA tensors accepts the CPU
    tensors the emulated device works on. The rest (checks, layouts, allocation, launches, the generator calls)
    compiles as it is, against the stand-ins of include/c10/cuda and include/ATen/cuda (torch_shim.cpp)."""
    source, blocks = _IMPL_BLOCK.subn(f"TORCH_LIBRARY_IMPL({NAMESPACE}, CPU, m)", source)
    if blocks != 1 or ".is_cuda()" not in source:
        raise EmulatorError("bindings.cpp: expected one `TORCH_LIBRARY_IMPL(fastat, CUDA, m)` block and `.is_cuda()` "
                            "checks to rewrite")
    return source.replace(".is_cuda()", ".is_cpu()")


# -------------------------------------------------------------------------------------------------------- building
def asan_enabled() -> bool:
    """FASTAT_EMU_ASAN=1: build with AddressSanitizer (the process must preload libasan, see test_build_variants.py)."""
    return os.environ.get("FASTAT_EMU_ASAN", "0") == "1"


def cpu_has_fma() -> bool:
    """Whether this CPU has FMA instructions (x86 ``fma`` flag in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " fma " in f" {line.split(':', 1)[1]} " for line in f)
    except OSError:
        return False


def contract_enabled() -> bool:
    """Let g++ fuse a*b+c into FMAs (-ffp-contract=fast -mfma) as nvcc does by default, so that an unprotected
    product-sum in an exact kernel shows as a mismatch against the reference. FASTAT_EMU_CONTRACT: "auto" (default: on
    where the CPU has FMA instructions), "1" on, "0" off. On by default so every emulated test runs the kernels as
    nvcc would compile them, not only a rerun of some (the separate FMA build this replaced)."""
    mode = os.environ.get("FASTAT_EMU_CONTRACT", "auto")
    return mode == "1" or (mode == "auto" and cpu_has_fma())


def _flags() -> list[str]:
    contract = ["-ffp-contract=fast", "-mfma"] if contract_enabled() else ["-ffp-contract=off"]
    flags = ["-std=c++20", "-O1", "-fPIC", "-pthread", *contract, "-fno-fast-math", "-Wall",
             "-Wno-unknown-pragmas", "-Wno-unused-function", "-Wno-unused-variable"]
    if asan_enabled():
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer", "-DFASTAT_EMU_ASAN=1"]
    return flags


def _torch_flags() -> list[str]:
    """What a translation unit including torch's headers needs (the includes of torch.utils.cpp_extension, torch's
    C++ ABI); the emulator's stand-in headers come first, so c10/cuda and ATen/cuda resolve to them."""
    import torch.utils.cpp_extension as cpp_extension

    flags = [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", "-Wno-sign-compare"]
    for d in cpp_extension.include_paths():
        flags += ["-isystem", d]
    return flags


def _torch_libs() -> list[str]:
    import torch.utils.cpp_extension as cpp_extension

    return [f"-L{d}" for d in cpp_extension.library_paths()] + ["-lc10", "-ltorch_cpu"]


def _sources() -> list[Path]:
    files = sorted((CSRC / "cuda").glob("*.cu")) + sorted((CSRC / "cuda").glob("*.cuh"))
    files += sorted((CSRC / "cuda").glob("*.h")) + sorted(CSRC.glob("*.h"))
    files += [CSRC / "cuda" / "bindings.cpp", HERE / "emu_runtime.cpp", HERE / "capi.cpp", HERE / "selftest.cu",
              HERE / "torch_shim.cpp", Path(__file__)]
    files += sorted((HERE / "include").rglob("*.h"))
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
#include <bit>
#include <cstdint>
#include <source_location>
#include <ucontext.h>
int main() { _Float16 h = std::bit_cast<_Float16>(std::uint16_t{0x3E00}); ucontext_t c; getcontext(&c);
             return static_cast<int>(std::source_location::current().line()) > 0 && h > 1 ? 0 : 1; }
"""


def toolchain_problem(compiler: str | None = None) -> str | None:
    """Why this machine cannot build the emulator (no C++ compiler, no C++20 <source_location> or std::bit_cast, no
    _Float16, no ucontext), or None. A failure to compile the kernels themselves is not a toolchain problem: it is a
    bug."""
    compiler = compiler or os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler}) to build the CUDA emulator"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text(_PROBE)
        res = subprocess.run([compiler, "-std=c++20", str(src), "-o", str(Path(tmp) / "probe")], capture_output=True,
                             text=True)
    if res.returncode != 0:
        return (f"{compiler} cannot build the CUDA emulator (needs C++20 <source_location> and std::bit_cast, "
                "_Float16, ucontext)")
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
    digest.update(" ".join([compiler, version, torch.__version__] + _flags() + _torch_flags()).encode())
    out_dir = _cache_root() / digest.hexdigest()[:16]
    lib_path = out_dir / KERNELS_LIB
    if not lib_path.exists():
        _prune(_cache_root(), keep=out_dir.name)
        work = out_dir.with_name(f"{out_dir.name}.tmp{os.getpid()}-{threading.get_ident()}")
        try:
            _compile(compiler, work, lib_path, verbose)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    lib = _load(lib_path)
    _load_ops(out_dir / OPS_LIB)
    return lib


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
    bindings = work / "csrc" / "cuda" / "bindings.cpp"
    bindings.write_text(rewrite_bindings((CSRC / "cuda" / "bindings.cpp").read_text()))
    torch_units = [bindings, HERE / "torch_shim.cpp"]  # the slowest first
    include = ["-I", str(HERE / "include"), "-I", str(work / "csrc" / "cuda"), "-I", str(work / "csrc")]

    def compile_one(src: Path) -> Path:
        obj = work / (src.stem + ".o")
        extra = _torch_flags() if src in torch_units else []
        cmd = [compiler, *_flags(), *include, *extra, "-x", "c++", "-c", str(src), "-o", str(obj)]
        if verbose:
            print(" ".join(cmd), file=sys.stderr)
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise EmulatorError(f"compiling {src.name} for the CUDA emulator failed:\n{res.stderr[-6000:]}")
        return obj

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        objects = list(pool.map(compile_one, torch_units + units))
    sanitize = ["-fsanitize=address"] if asan_enabled() else []

    def link(name: str, objs: list[Path], libs: list[str]) -> None:
        cmd = [compiler, "-shared", "-pthread", *sanitize, *map(str, objs), f"-Wl,-soname,{name}", *libs, "-o",
               str(work / name)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise EmulatorError(f"linking {name} for the CUDA emulator failed:\n{res.stderr[-6000:]}")

    # the kernels and the emulator; the binding on top of them, against torch (its libraries are loaded already)
    link(KERNELS_LIB, objects[len(torch_units):], [])
    link(OPS_LIB, objects[:len(torch_units)], [f"-L{work}", f"-l:{KERNELS_LIB}", "-Wl,-rpath,$ORIGIN", *_torch_libs()])
    lib_path.parent.mkdir(parents=True, exist_ok=True)
    # atomic, the kernels last (their file is the cache's marker): concurrent builders both end up with whole files
    os.replace(work / OPS_LIB, lib_path.parent / OPS_LIB)
    os.replace(work / KERNELS_LIB, lib_path)


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    p, i, i64, d, u64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_double, ctypes.c_uint64
    sig = {
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


def _take_launches(lib) -> list[str]:
    buf = ctypes.create_string_buffer(1 << 20)
    lib.emu_take_log(buf, len(buf))
    return buf.value.decode().splitlines()


def take_log(lib) -> list[str]:
    """The launches since the last call: 'kernel<...> grid=G block=T smem=S cluster=K' lines."""
    launched = _pending_log + _take_launches(lib)
    _pending_log.clear()
    return launched


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


# ------------------------------------------------------------------------------------------------------------ ops
class _Ops:
    """The loaded binding: torch.ops.fastat_emu and the guarded allocator's switches (torch_shim.cpp)."""

    def __init__(self, path: Path):
        self.path = path
        self.library = torch.library.Library(NAMESPACE, "DEF")  # kept alive: it owns the schemas and fakes
        from fastat.ops._library import register_fakes
        from fastat.ops._schemas import SCHEMAS

        for schema in SCHEMAS.values():
            self.library.define(schema)
        register_fakes(NAMESPACE, self.library)
        torch.ops.load_library(str(path))  # runs bindings.cpp's TORCH_LIBRARY_IMPL(fastat_emu, CPU, m)
        self.c = ctypes.CDLL(str(path))
        self.c.emu_guards_arm.argtypes = [ctypes.c_int]
        self.c.emu_guards_check.argtypes = [ctypes.c_char_p, ctypes.c_int]
        self.ops = getattr(torch.ops, NAMESPACE)


_OPS: _Ops | None = None


def _load_ops(path: Path) -> None:
    global _OPS
    if _OPS is None:
        _OPS = _Ops(path)
    elif _OPS.path != path:  # one fastat_emu per process: the ops cannot be registered twice
        raise EmulatorError(f"the emulated ops were loaded from {_OPS.path} already, not {path}")


def ops():
    """torch.ops.fastat_emu: the emulated CUDA kernels behind the real binding, on CPU tensors (after build())."""
    if _OPS is None:
        raise EmulatorError("build() the emulator first")
    return _OPS.ops


_pending_log: list[str] = []  # launches a wrapper has looked at, not yet taken by take_log()


_armed = 0  # nesting depth of guarded_allocations()


def take_problems(lib) -> list[str]:
    """What went wrong since the last call and was not reported yet: a kernel fault the emulator recorded (taking it
    also clears the sticky launch error), and a guard violation of the guarded allocator."""
    problems = []
    buf = ctypes.create_string_buffer(1 << 14)
    if lib.emu_take_failure(buf, len(buf)):
        problems.append(buf.value.decode())
    if _OPS is not None and _OPS.c.emu_guards_check(buf, len(buf)):
        problems.append(buf.value.decode())
    return problems


@contextlib.contextmanager
def guarded_allocations(lib, what: str = "emulated ops"):
    """Within the block, CPU tensors come from the guarded allocator of torch_shim.cpp: filled with NaN, between 4 KB
    guards (NaN too). On leaving it, however it is left (an exception included, which is then chained): a kernel
    fault the emulator recorded, or a changed guard in a tensor alive now or freed since entering, raises
    EmulatorError."""
    global _armed
    if _OPS is None:
        raise EmulatorError("build() the emulator first")
    if _armed == 0 and _OPS.c.emu_guards_arm(1) != 0:
        raise EmulatorError("torch refused the guarded CPU allocator")
    _armed += 1

    def leave():
        global _armed
        _armed -= 1
        if _armed == 0:
            _OPS.c.emu_guards_arm(0)
        problems = take_problems(lib)
        if problems:
            raise EmulatorError(f"{what}: {'; '.join(problems)}")

    try:
        yield
    except BaseException:
        leave()  # raises EmulatorError, chained to the block's exception, if the emulator saw something
        raise
    leave()


def call(lib, name: str, *args, mutated: tuple[int, ...] = (), **kwargs):
    """torch.ops.fastat_emu.<name>(*args, **kwargs) under guarded_allocations(), the positional tensors in `mutated`
    replaced by guarded copies for the call (returned in `args`, for the caller to copy back). Returns (out, args)."""
    args = list(args)
    with guarded_allocations(lib, name):
        for i in mutated:
            args[i] = args[i].clone()
        out = getattr(ops(), name)(*args, **kwargs)
    return out, args


def zerograd_step(lib, delta, grad, x, eps, alpha, q):
    return call(lib, "zerograd_step", delta, grad, x, eps, alpha, q)[0]


def pgd_step(lib, delta, grad, x, eps, alpha, active=None):
    return call(lib, "pgd_step", delta, grad, x, eps, alpha, active)[0]


def multigrad_step(lib, grads, x, eps, alpha, threshold=None):
    return call(lib, "multigrad_step", grads, x, eps, alpha, threshold)[0]


def atas_gather(lib, delta_buf, index, offsets, flips, x):
    return call(lib, "atas_gather", delta_buf, index, offsets, flips, x)[0]


def atas_step(lib, delta_buf, v_buf, index, offsets, flips, grad, x_adv, x, path: list | None = None, **kwargs):
    """As fastat.ops.atas_step (delta_buf and v_buf updated in place); `path` gets 'fused' or 'split' appended, as the
    launch log shows."""
    _pending_log.extend(_take_launches(lib))  # earlier launches are not this call's
    out, args = call(lib, "atas_step", delta_buf, v_buf, index, offsets, flips, grad, x_adv, x, mutated=(0, 1),
                     **kwargs)
    delta_buf.copy_(args[0])
    v_buf.copy_(args[1])
    if path is not None:
        launched = _take_launches(lib)
        _pending_log.extend(launched)
        path.append("split" if any("atas_update_kernel" in k for k in launched) else
                    "fused" if any("atas_step_fused_kernel" in k for k in launched) else "none")
    return out


def uniform_init(lib, x, eps, seed, offset):
    """The launcher with a chosen Philox seed and offset (capi.cpp; the binding takes them from a generator)."""
    xc = x.contiguous()
    out = _Guarded(xc)
    _check(lib, "uniform_init", lib.emu_uniform_init(_ptr(xc), _ptr(out.t), DTYPES[xc.dtype], xc.numel(), eps, seed,
                                                     offset))
    return out.check("uniform_init")
