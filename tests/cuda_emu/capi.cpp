// extern "C" entry points over csrc/cuda/launchers.h for ctypes (tests/cuda_emu/emulator.py). Each mirrors what
// csrc/cuda/bindings.cpp does with the tensors' pointers and Python scalars, minus the torch parts (validation, layout,
// allocation), which the Python side does on CPU tensors. Returns the launcher's cudaError_t.
#include <vector>

#include "kernel_utils.cuh"
#include "launchers.h"

using fastat::cuda::DType;

extern "C" {

int emu_zerograd_step(const void* delta, const void* grad, const void* x, void* out, int dtype, int grad_dtype,
                      int64_t batch, int64_t row_numel, double eps, double alpha, double q) {
  return fastat::cuda::launch_zerograd_step(delta, grad, x, out, static_cast<DType>(dtype),
                                            static_cast<DType>(grad_dtype), batch, row_numel, static_cast<float>(eps),
                                            static_cast<float>(alpha), q, nullptr);
}

int emu_multigrad_step(const void* grads, const void* x, void* out, int dtype, int grad_dtype, int64_t num_starts,
                       int64_t numel, int64_t min_votes, double eps, double alpha) {
  return fastat::cuda::launch_multigrad_step(grads, x, out, static_cast<DType>(dtype), static_cast<DType>(grad_dtype),
                                             num_starts, numel, min_votes, static_cast<float>(eps),
                                             static_cast<float>(alpha), nullptr);
}

int emu_pgd_step(const void* delta, const void* grad, const void* x, const bool* active, void* out, int dtype,
                 int grad_dtype, int64_t batch, int64_t row_numel, double eps, double alpha) {
  return fastat::cuda::launch_pgd_step(delta, grad, x, active, out, static_cast<DType>(dtype),
                                       static_cast<DType>(grad_dtype), batch, row_numel, static_cast<float>(eps),
                                       static_cast<float>(alpha), nullptr);
}

// shape: batch, channels, height, width, num_examples, buf_height, buf_width
int emu_atas_gather(const void* delta_buf, int buf_dtype, const int64_t* index, const int64_t* offsets,
                    const bool* flips, const void* x, void* out, int dtype, const int64_t* shape) {
  const fastat::cuda::AtasShape s{shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6]};
  return fastat::cuda::launch_atas_gather(delta_buf, static_cast<DType>(buf_dtype), index, offsets, flips, x, out,
                                          static_cast<DType>(dtype), s, nullptr);
}

// scalars: eps, c, beta, gamma_over_c, step_min, step_max (the op's Python floats). *path_taken: 1 fused, 2 split.
int emu_atas_step(void* delta_buf, int buf_dtype, float* v_buf, const int64_t* index, const int64_t* offsets,
                  const bool* flips, const void* grad, int grad_dtype, const void* x_adv, const void* x, void* out,
                  int dtype, const int64_t* shape, const double* scalars, int warmup, int* path_taken) {
  fastat::cuda::AtasStepOperands op;
  op.delta_buf = delta_buf;
  op.buf_dtype = static_cast<DType>(buf_dtype);
  op.v_buf = v_buf;
  op.index = index;
  op.offsets = offsets;
  op.flips = flips;
  op.grad = grad;
  op.grad_dtype = static_cast<DType>(grad_dtype);
  op.x_adv = x_adv;
  op.x = x;
  op.out = out;
  op.dtype = static_cast<DType>(dtype);
  const fastat::cuda::AtasShape s{shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6]};
  fastat::cuda::AtasStepParams p;
  p.eps = static_cast<float>(scalars[0]);
  p.c = static_cast<float>(scalars[1]);
  p.beta = static_cast<float>(scalars[2]);
  p.one_minus_beta = static_cast<float>(1.0 - scalars[2]);
  p.gamma_over_c = static_cast<float>(scalars[3]);
  p.step_min = static_cast<float>(scalars[4]);
  p.step_max = static_cast<float>(scalars[5]);
  p.warmup = warmup != 0;
  bool done = false;
  *path_taken = 0;
  cudaError_t err = fastat::cuda::launch_atas_step_fused(op, s, p, &done, nullptr);
  if (err != cudaSuccess) return err;
  if (done) {
    *path_taken = 1;
    return cudaSuccess;
  }
  const int64_t row_numel = s.channels * s.height * s.width;
  const int64_t bytes = fastat::cuda::atas_step_split_workspace_bytes(s.batch, row_numel, p.warmup);
  std::vector<double> workspace(static_cast<size_t>((bytes + 7) / 8) + 2);  // 16-byte aligned below
  void* ws = bytes > 0 ? reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(workspace.data()) + 15) / 16 * 16)
                       : nullptr;
  *path_taken = 2;
  return fastat::cuda::launch_atas_step_split(op, s, p, ws, nullptr);
}

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
