// Emulator stand-in for c10/cuda/CUDAStream.h (tests/cuda_emu/bindings.py): the current stream is the emulator's
// only one, the null stream.
#pragma once
#include <cuda_runtime_api.h>

namespace c10::cuda {

struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
};

inline CUDAStream getCurrentCUDAStream(signed char /*device_index*/ = -1) { return {}; }

}  // namespace c10::cuda
