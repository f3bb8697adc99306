// Emulator stand-in for c10/cuda/CUDAGuard.h (tests/cuda_emu/emulator.py builds bindings.cpp with it): the emulated
// device is the CPU, so the guard holds nothing (a binding that guards the wrong device goes unseen here).
#pragma once
#include <c10/core/Device.h>

namespace c10::cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
  CUDAGuard(const CUDAGuard&) = delete;
  CUDAGuard& operator=(const CUDAGuard&) = delete;
};

}  // namespace c10::cuda
