// Emulator stand-in for c10/cuda/CUDAStream.h (tests/cuda_emu/emulator.py builds bindings.cpp with it): the current
// stream is the emulator's only one, the null stream (a binding that launches on the wrong stream goes unseen here).
#pragma once
#include <cuda_runtime_api.h>

namespace c10::cuda {

struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
};

inline CUDAStream getCurrentCUDAStream(signed char /*device_index*/ = -1) { return {}; }

}  // namespace c10::cuda
