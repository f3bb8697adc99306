// extern "C" entry points over csrc/cuda/launchers.h for ctypes (tests/cuda_emu/emulator.py), for what the binding
// cannot reach: uniform_init with a chosen Philox seed and offset (eager and graph-captured forms) and the fp16/bf16
// conversions. The ops themselves are called through csrc/cuda/bindings.cpp (torch.ops.fastat_emu).
#include "kernel_utils.cuh"
#include "launchers.h"

using fastat::cuda::DType;

extern "C" {

int emu_uniform_init(const void* x, void* out, int dtype, int64_t numel, double eps, uint64_t seed, uint64_t offset) {
  fastat::cuda::PhiloxArgs philox;
  philox.seed = seed;
  philox.offset = offset;
  return fastat::cuda::launch_uniform_init(x, out, static_cast<DType>(dtype), numel, static_cast<float>(eps), philox,
                                           nullptr);
}

// The CUDA-graph form: seed and offset read on the device from *seed_ptr and *offset_ptr + offset_intragraph.
int emu_uniform_init_captured(const void* x, void* out, int dtype, int64_t numel, double eps, const int64_t* seed_ptr,
                              const int64_t* offset_ptr, uint64_t offset_intragraph) {
  fastat::cuda::PhiloxArgs philox;
  philox.captured = true;
  philox.seed_ptr = seed_ptr;
  philox.offset_ptr = offset_ptr;
  philox.offset_intragraph = offset_intragraph;
  return fastat::cuda::launch_uniform_init(x, out, static_cast<DType>(dtype), numel, static_cast<float>(eps), philox,
                                           nullptr);
}

// out[i] = from_float<T>(in[i]) then back to_float (T = fp16 if dtype == 2, else bf16): the conversions every kernel
// stores and loads with, on the emulator's stand-in types.
void emu_round_trip(const float* in, float* out, int64_t n, int dtype) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = dtype == 2 ? fastat::cuda::to_float(fastat::cuda::from_float<__half>(in[i]))
                        : fastat::cuda::to_float(fastat::cuda::from_float<__nv_bfloat16>(in[i]));
  }
}

}  // extern "C"
