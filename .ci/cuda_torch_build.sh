#!/usr/bin/env bash
# Build the whole extension (CPU + CUDA kernels + bindings.cpp) against a CUDA build of torch on a machine without a
# GPU, load it, and check that every fastat:: op has a CUDA kernel. This is what a GPU session's first import does;
# the dispatcher refuses, at load time, CPU and CUDA kernels of one op with different C++ signatures (it caught such a
# bug in atas_step), which neither .ci/nvcc_check.sh nor the CPU-only build can see. Not part of .ci/run (a CUDA torch
# is ~5 GB and the build ~8 min on 2 cores); run it before a GPU session after changing csrc/.
#
# Usage: bash .ci/cuda_torch_build.sh
#   VENV        virtual environment to use or create (default: .venv-cuda-torch, git-ignored)
#   TORCH_SPEC  torch to install there (default: torch==2.11.0, the GPU machine's: a CUDA 13.0 build from PyPI)
#   CUDA_HOME   CUDA toolkit with nvcc and headers (default: what setup.py finds; it prefers a directory with both
#               bin/nvcc and include/cuda_runtime.h over torch's guess from a wrapper nvcc on PATH)
#   MAX_JOBS    parallel compile jobs (default: 2)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-cuda-torch}"
export MAX_JOBS="${MAX_JOBS:-2}" FASTAT_CUDA=1

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "${TORCH_SPEC:-torch==2.11.0}" numpy setuptools wheel ninja pybind11
fi
"$VENV/bin/python" -c "import torch; assert torch.version.cuda, 'torch in $VENV is not a CUDA build'"
"$VENV/bin/python" setup.py -q build_ext --inplace
"$VENV/bin/python" - <<'PYEOF'
import torch

import fastat
from fastat.info import environment
from fastat.ops._schemas import SCHEMAS

env = environment()
assert env["extension"] == "loaded" and str(env["extension_cuda"]) == "True", env
missing = [op for op in SCHEMAS for key in ("CPU", "CUDA")
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fastat::{op}", key)]
assert not missing, f"ops without a kernel: {missing}"
print(f"cuda_torch_build: fastat._C loads against torch {torch.__version__}; "
      f"CPU and CUDA kernels registered for {', '.join(sorted(SCHEMAS))}")
PYEOF
