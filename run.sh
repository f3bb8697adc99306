#!/usr/bin/env bash
# fastat's entry points on a fresh machine.
#   ./run.sh setup   create .venv, install the dependencies and fastat (builds the C++/CUDA extension), fetch the data
#   ./run.sh test    the test suite (CPU tests; the emulated CUDA, Triton and AddressSanitizer runs, two at a time)
#   ./run.sh demo    the main job: catastrophic overfitting and two remedies on Fashion-MNIST, plot + table (scripts/demo.sh)
#   ./run.sh bench   `fastat bench ops`: each op x backend against pure PyTorch on this machine
# Environment: VENV (default .venv), PYTHON (default python3), TORCH_SPEC (default torch==2.13.0; on a CUDA machine
# with torch already installed, set VENV to that environment or use `pip install --no-build-isolation .` directly).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY="$VENV/bin/python"

setup() {
  if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null || echo "run.sh: could not install dataset-fashion-mnist" >&2
  fi
  [ -x "$PY" ] || "${PYTHON:-python3}" -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip setuptools wheel
  "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" "triton==3.6.0" numpy ninja tqdm matplotlib tabulate \
    pytest pytest-benchmark hypothesis pyautoattack
  MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install -q --no-build-isolation "${INSTALL_MODE:-.}"
  "$PY" -c "import fastat; print('fastat backends:', fastat.ops.available_backends())"
}

run_tests() {
  # Run from tests/' parent with the installed package (not the source tree) on the path. Four pytest processes:
  # 1. the CPU tests, but for the Triton and AddressSanitizer ones;
  # 2. without a GPU, the CUDA tests but the GPU-only ones once more, small shapes, on the CUDA kernels and their real
  #    binding under the CPU emulator (tests/gpu/_dryrun.py), so a GPU session meets neither test-code nor binding
  #    bugs first;
  # 3. the Triton tests, which need TRITON_INTERPRET=1 set before triton is imported;
  # 4. the emulated kernel tests rebuilt under AddressSanitizer (tests/cuda_emu/test_build_variants.py).
  # 2 and 3-then-4 run side by side (each is one process that keeps one core busy; together about 3 minutes less on 2
  # cores); the second pair's output is printed when it ends, and any failure fails the whole.
  "$PY" -m pytest -q -m "not triton and not sanitizer" tests "$@"
  local log rc=0
  log=$(mktemp)
  {
    TRITON_INTERPRET=1 FASTAT_TRITON_AUTOTUNE=0 "$PY" -m pytest -q -m triton tests "$@" || {
      r=$?; [ "$r" -eq 5 ] && echo "run.sh: no Triton tests collected" || exit "$r"; }
    "$PY" -m pytest -q -m sanitizer tests/cuda_emu "$@" || {
      r=$?; [ "$r" -eq 5 ] && echo "run.sh: no AddressSanitizer tests collected" || exit "$r"; }
  } > "$log" 2>&1 &
  local side=$!
  if "$PY" -c "import sys, torch; sys.exit(1 if torch.cuda.is_available() else 0)"; then
    FASTAT_CUDA_TESTS_ON_CPU=emu FASTAT_CUDA_TEST_SHAPES=sanitizer "$PY" -m pytest -q -m cuda tests/gpu "$@" || rc=$?
  fi
  local side_rc=0
  wait "$side" || side_rc=$?
  echo "run.sh: the Triton tests, then the AddressSanitizer rerun (run beside the emulated tests):"
  cat "$log"; rm -f "$log"
  [ "$rc" -ne 0 ] && return "$rc"
  return "$side_rc"
}

case "${1:-}" in
  setup) setup ;;
  test) shift; run_tests "$@" ;;
  demo) shift; PYTHON="$PY" bash scripts/demo.sh "$@" ;;
  bench) shift; "$PY" -m fastat bench ops "$@" ;;
  *) echo "usage: ./run.sh setup|test|demo|bench [args]" >&2; exit 2 ;;
esac
