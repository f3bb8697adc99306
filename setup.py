"""Build fastat: the Python packages plus the `fastat._C` extension (CPU C++ always, CUDA when possible).

Environment switches (read at build time):
  FASTAT_NO_EXT=1          pure-Python install: no extension; the torch (and Triton) backends still work.
  FASTAT_CUDA=auto|0|1     auto (default): add csrc/cuda when torch is a CUDA build *and* nvcc is found.
                           Never gated on torch.cuda.is_available(), which is False on GPU-less build boxes.
                           1 forces CUDA and fails loudly if impossible; 0 never builds it.
  TORCH_CUDA_ARCH_LIST     CUDA architectures (default "9.0+PTX").
  MAX_JOBS                 parallel compile jobs (default: min(cores, free memory / 5 GB), at least 1).
  DEBUG=1                  -O0 -g (and -lineinfo for nvcc).
"""

from __future__ import annotations

import glob
import os
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"


def _env_flag(name: str, default: str = "auto") -> str:
    value = os.environ.get(name, default).strip().lower()
    if value not in {"auto", "0", "1"}:
        raise SystemExit(f"setup.py: {name} must be auto, 0 or 1, got {value!r}")
    return value


def _default_max_jobs() -> str:
    cores = os.cpu_count() or 1
    try:
        with open("/proc/meminfo") as f:
            avail_kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
        by_memory = max(1, avail_kb // (5 * 1024 * 1024))  # about 5 GB per nvcc/cc1plus job
    except (OSError, StopIteration):
        by_memory = cores
    return str(max(1, min(cores, by_memory)))


def _set_cuda_home() -> None:
    """torch guesses CUDA_HOME as two directories above the nvcc on PATH, which is wrong for a wrapper script such
    as /usr/local/bin/nvcc (the build then cannot find cuda_runtime.h): unless CUDA_HOME/CUDA_PATH is set, prefer a
    toolkit directory that has both nvcc and the runtime headers."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or shutil.which("nvcc") is None:
        return
    has_toolkit = lambda d: (os.path.exists(os.path.join(d, "include", "cuda_runtime.h"))  # noqa: E731
                             and os.path.exists(os.path.join(d, "bin", "nvcc")))
    if has_toolkit(os.path.dirname(os.path.dirname(os.path.realpath(shutil.which("nvcc"))))):
        return
    for home in ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]:
        if has_toolkit(home):
            os.environ["CUDA_HOME"] = home
            return


def _cuda_wanted() -> bool:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    mode = _env_flag("FASTAT_CUDA")
    nvcc = CUDA_HOME is not None and (
        os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")) or shutil.which("nvcc") is not None
    )
    possible = torch.version.cuda is not None and nvcc
    if mode == "1" and not possible:
        raise SystemExit(
            "setup.py: FASTAT_CUDA=1 but CUDA cannot be built "
            f"(torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={CUDA_HOME!r})"
        )
    return possible and mode != "0"


def _torch_at_least_2_14() -> bool:
    """torch >= 2.14: its headers need C++20 (C++17 before, what those torches are built with)."""
    import re

    import torch

    m = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (2, 14)


def _extensions():
    if os.environ.get("FASTAT_NO_EXT", "0") == "1":
        return [], {}
    _set_cuda_home()
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    os.environ.setdefault("MAX_JOBS", _default_max_jobs())
    debug = os.environ.get("DEBUG", "0") == "1"
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    new_torch = _torch_at_least_2_14()
    std = "c++20" if new_torch else "c++17"
    # -ffp-contract=off: the CPU kernels must round exactly like the eager reference (no silent FMA contraction).
    cxx += [f"-std={std}", "-fopenmp", "-ffp-contract=off", "-DPy_LIMITED_API=0x030A0000"]
    csrc = os.path.join("csrc")
    sources = [os.path.join(csrc, "module.cpp")] + sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    kwargs = dict(extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"], py_limited_api=True,
                  include_dirs=[os.path.join(ROOT, "csrc")])
    if _cuda_wanted():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0+PTX")
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cpp")))
        nvcc = ["-O3", f"-std={std}", "--expt-relaxed-constexpr"]
        nvcc += ["-O0", "-g", "-lineinfo"] if debug else ["-lineinfo"]
        kwargs["extra_compile_args"]["nvcc"] = nvcc
        kwargs["extra_compile_args"]["cxx"] = cxx + ["-DFASTAT_WITH_CUDA"]
        ext = CUDAExtension("fastat._C", sources, **kwargs)
    else:
        ext = CppExtension("fastat._C", sources, **kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="fastat",
    version=VERSION,
    description="Fused CUDA/Triton kernels and a trainer for fast (FGSM-based) adversarial training and evaluation",
    long_description=open(os.path.join(ROOT, "README.md")).read() if os.path.exists(os.path.join(ROOT, "README.md")) else "",
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages("python") + find_packages(".", include=["fastat_kernels", "fastat_kernels.*"]),
    package_dir={"fastat": "python/fastat", "fastat_kernels": "fastat_kernels"},
    package_data={"fastat": ["py.typed", "ops/auto_cuda.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=["torch>=2.4", "numpy", "tqdm", "matplotlib"],
    extras_require={
        "triton": ["triton>=3.6"],
        "eval": ["pyautoattack>=0.2"],
        "vision": ["torchvision"],
        "test": ["pytest", "pytest-benchmark", "hypothesis", "tabulate"],
        "bench": ["pytest-benchmark", "tabulate"],
    },
    entry_points={"console_scripts": ["fastat=fastat.cli:main"]},
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
    zip_safe=False,
)
