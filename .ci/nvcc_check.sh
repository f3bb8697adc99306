#!/usr/bin/env bash
# CI gate for the CUDA sources, no GPU needed: compile every csrc/cuda/*.cu on its own with nvcc (they include no torch
# headers) and fail on any error; then, when a torch with the ATen CUDA headers is importable (CPU wheels ship them),
# syntax-check csrc/cuda/bindings.cpp against them, since it is otherwise compiled only on a CUDA-torch machine.
# Usage: bash .ci/nvcc_check.sh [extra nvcc flags...]
#   NVCC      compiler to use (default: nvcc on PATH)
#   ARCH      target architecture (default: sm_90)
#   JOBS      files compiled in parallel (default: 1; each nvcc job takes ~1 GB)
#   BINDINGS  auto (default: check bindings.cpp if torch is importable), 1 (required), 0 (skip)
#   PYTHON    interpreter with torch for the bindings check (default: python3)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nvcc="${NVCC:-nvcc}"
arch="${ARCH:-sm_90}"
jobs="${JOBS:-1}"

if ! command -v "$nvcc" >/dev/null 2>&1; then
  echo "nvcc_check: '$nvcc' not found" >&2
  exit 2
fi

shopt -s nullglob
sources=("$root"/csrc/cuda/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
  echo "nvcc_check: no csrc/cuda/*.cu files" >&2
  exit 2
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

compile() {  # $1 = source; prints one status line, keeps the compiler output in $tmp/<name>.log
  local src="$1" name
  name="$(basename "$src" .cu)"
  if "$nvcc" -c -arch="$arch" -std=c++17 -Xcompiler -Wall "${@:2}" -o "$tmp/$name.o" "$src" >"$tmp/$name.log" 2>&1; then
    echo "ok    $name.cu"
  else
    echo "FAIL  $name.cu"
  fi
}
export -f compile
export nvcc arch tmp

echo "nvcc_check: $("$nvcc" --version | tail -n 1), -arch=$arch, ${#sources[@]} files"
status=0
results="$(printf '%s\n' "${sources[@]}" | xargs -P "$jobs" -I{} bash -c 'compile "$@"' _ {} "$@")"
echo "$results"
for src in "${sources[@]}"; do
  name="$(basename "$src" .cu)"
  if grep -q "^FAIL  $name.cu$" <<<"$results"; then
    status=1
    echo "---- $name.cu ----"
    cat "$tmp/$name.log"
  elif [ -s "$tmp/$name.log" ]; then
    echo "---- $name.cu (warnings) ----"
    cat "$tmp/$name.log"
  fi
done

bindings_check() {
  local py="${PYTHON:-python3}" inc cuda_inc flags=() d new std
  inc="$("$py" -c 'from torch.utils.cpp_extension import include_paths; print(" ".join(include_paths()))' 2>/dev/null)"
  # as setup.py: torch >= 2.14 needs C++20
  new="$("$py" -c 'import re, torch; m = re.match(r"(\d+)\.(\d+)", torch.__version__)
print(int((int(m[1]), int(m[2])) >= (2, 14)))' 2>/dev/null || echo 0)"
  std=$([ "$new" = 1 ] && echo c++20 || echo c++17)
  if [ -z "$inc" ] || [ ! -f "${inc%% *}/ATen/cuda/CUDAGeneratorImpl.h" ]; then
    echo "skip  bindings.cpp (no torch with ATen CUDA headers for $py)"
    [ "${BINDINGS:-auto}" = 1 ] && return 1
    return 0
  fi
  cuda_inc="${CUDA_HOME:-/nonexistent}/include"
  if [ ! -f "$cuda_inc/cuda_runtime.h" ]; then  # ask nvcc where its headers are
    cuda_inc="$("$nvcc" --dryrun -c -x cu /dev/null 2>&1 | grep -o -- '-I"\?[^ "]*include' | head -n 1)"
    cuda_inc="$(sed 's/^-I"\?//' <<<"$cuda_inc")"
  fi
  for d in $inc; do flags+=("-I$d"); done
  # CPU wheels lack this CMake-generated header; an empty stand-in is enough for a syntax check.
  if [ ! -f "${inc%% *}/c10/cuda/impl/cuda_cmake_macros.h" ]; then
    mkdir -p "$tmp/stub/c10/cuda/impl"
    echo "#pragma once" >"$tmp/stub/c10/cuda/impl/cuda_cmake_macros.h"
    flags=("-I$tmp/stub" "${flags[@]}")
  fi
  if "${CXX:-g++}" -std="$std" -fsyntax-only -Wall -Wno-c++20-extensions -DFASTAT_WITH_CUDA \
    "${flags[@]}" \
    -I"$cuda_inc" -I"$root/csrc" "$root/csrc/cuda/bindings.cpp" >"$tmp/bindings.log" 2>&1; then
    echo "ok    bindings.cpp (syntax, $std, against $(dirname "${inc%% *}"))"
    [ -s "$tmp/bindings.log" ] && grep -v "c++20\|^\s*[0-9]* |\|^\s*|" "$tmp/bindings.log" | head -n 40
    return 0
  fi
  echo "FAIL  bindings.cpp"
  cat "$tmp/bindings.log"
  return 1
}

if [ "${BINDINGS:-auto}" != 0 ] && [ -f "$root/csrc/cuda/bindings.cpp" ]; then
  bindings_check || status=1
fi
exit $status
