// Torch-free entry points of the CUDA kernels (csrc/cuda/*.cu); csrc/cuda/bindings.cpp adapts at::Tensor to these.
//
// Plain C/C++ types only: raw device pointers, int64_t sizes, fp32 scalars already rounded from the Python floats,
// a dtype tag and the stream to launch on. Every launcher enqueues its kernels on `stream`, never synchronizes, never
// allocates, and returns cudaGetLastError() (cudaSuccess when there is nothing to do, e.g. batch == 0).
//
// Layout: per-row ops (zerograd, multigrad, pgd) see each sample as one flat row of `row_numel` elements, rows back to
// back; every operand must use the same element order (both NCHW-contiguous or both channels_last, say), which the
// binding arranges. ATAS ops take NCHW-contiguous x/grad/x_adv/out and a contiguous (N, C, H+2p, W+2p) delta_buf.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastat {
namespace cuda {

// dtype of a floating-point operand; math is fp32 whatever the storage.
enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// ---------------------------------------------------------------------------------------------------- zerograd_step
// out = box(clamp(delta + keep·alpha·sign(grad), -eps, eps), x), keep = |grad| >= tau_row, tau_row = torch.quantile(
// |grad_row|, q) computed exactly (radix selection of the two order statistics + torch's lerp). delta, x, out: (batch,
// row_numel) in `dtype`; grad in `grad_dtype`. row_numel must be < 2^32 (the op allows < 2^24). tau interpolates
// between the rank_lo-th and rank_hi-th smallest |grad| of a row (0-based) with the fp32 weight rank_w: torch.quantile's
// ranks for q, by the rule of the running torch (../quantile_rank.h; the binding computes them), so
// 0 <= rank_lo <= rank_hi <= min(rank_lo + 1, row_numel - 1).
cudaError_t launch_zerograd_step(const void* delta, const void* grad, const void* x, void* out, DType dtype,
                                 DType grad_dtype, int64_t batch, int64_t row_numel, float eps, float alpha,
                                 int64_t rank_lo, int64_t rank_hi, float rank_w, cudaStream_t stream);

// --------------------------------------------------------------------------------------------------- multigrad_step
// votes = Σ_s sign(grads[s]); keep = |votes| >= min_votes (= 2·threshold − S); out = box(clamp(keep·alpha·sign(votes),
// -eps, eps), x). grads: (num_starts, numel) in `grad_dtype`, slices back to back; x, out: (numel,) in `dtype`.
cudaError_t launch_multigrad_step(const void* grads, const void* x, void* out, DType dtype, DType grad_dtype,
                                  int64_t num_starts, int64_t numel, int64_t min_votes, float eps, float alpha,
                                  cudaStream_t stream);

// ------------------------------------------------------------------------------------------------------ ATAS shapes
// x is (batch, channels, height, width); delta_buf is (num_examples, channels, buf_height, buf_width) with
// buf_height - height == buf_width - width == 2p. Kernels clamp index[b] into [0, num_examples - 1] and offsets into
// [0, 2p] (row) / [0, buf_width - width] (column), so no value of index/offsets can make them read or write out of
// bounds; the Python layer validates the values (on CPU, or on CUDA under FASTAT_DEBUG=1).
struct AtasShape {
  int64_t batch, channels, height, width;
  int64_t num_examples, buf_height, buf_width;
};

// out[b,c,i,j] = clamp(x[b,c,i,j] + delta_buf[index[b], c, off[b,0] + i, off[b,1] + j'], 0, 1), j' = W-1-j if flips[b].
// index: (batch,) int64, offsets: (batch, 2) int64 contiguous, flips: (batch,) bool. x/out in `dtype`.
cudaError_t launch_atas_gather(const void* delta_buf, DType buf_dtype, const int64_t* index, const int64_t* offsets,
                               const bool* flips, const void* x, void* out, DType dtype, AtasShape shape,
                               cudaStream_t stream);

// Scalars of atas_step, each rounded once to fp32 on the host (one_minus_beta = (float)(1.0 - beta)).
struct AtasStepParams {
  float eps, c, beta, one_minus_beta, gamma_over_c, step_min, step_max;
  bool warmup;
};

// The operands of atas_step: grad (grad_dtype), x_adv, x, out (dtype): NCHW-contiguous (batch, C, H, W); delta_buf
// (buf_dtype): contiguous (num_examples, C, H+2p, W+2p), its windows written; v_buf: (num_examples,) fp32, read and
// written unless warmup; index: (batch,) int64, offsets: (batch, 2) int64 contiguous, flips: (batch,) bool.
struct AtasStepOperands {
  void* delta_buf;
  DType buf_dtype;
  float* v_buf;
  const int64_t* index;
  const int64_t* offsets;
  const bool* flips;
  const void* grad;
  DType grad_dtype;
  const void* x_adv;
  const void* x;
  void* out;
  DType dtype;
};

// atas_step: v = beta·v_buf[index] + (1-beta)·Σg² (fp64 sum rounded to fp32; no FMA), written back to v_buf[index];
// step = clamp(gamma_over_c / (1 + sqrt(v)/c), step_min, step_max) (eps if warmup, v untouched);
// out = clamp(min(max(x_adv + step·sign(g), x - eps), x + eps), 0, 1); the window of delta_buf[index] = out - x.
// Two launchers, tried in this order (see atas.cu):
//  * launch_atas_step_fused enqueues the one-launch path where it can run and sets *done = true (also when there is
//    nothing to do, and always for images of no elements, whose v is still updated); where it cannot (no cluster
//    support or fit, rows of 2^31 elements or more, a refused launch, FASTAT_CUDA_ATAS_PATH=split) it enqueues
//    nothing, sets *done = false and returns cudaSuccess;
//  * then launch_atas_step_split does the work in two launches with `workspace`, atas_step_split_workspace_bytes(...)
//    bytes (0 when warmup: nullptr is fine), 16-byte aligned. Only this path needs scratch. Rows of 0 elements:
//    cudaErrorInvalidValue (the fused launcher takes them).
cudaError_t launch_atas_step_fused(const AtasStepOperands& op, AtasShape shape, AtasStepParams params, bool* done,
                                   cudaStream_t stream);
int64_t atas_step_split_workspace_bytes(int64_t batch, int64_t row_numel, bool warmup);
cudaError_t launch_atas_step_split(const AtasStepOperands& op, AtasShape shape, AtasStepParams params,
                                   void* workspace, cudaStream_t stream);

// --------------------------------------------------------------------------------------------------------- pgi_step
// The operands of pgi_step: grad (grad_dtype), x_adv, x, out (dtype): NCHW-contiguous (batch, C, H, W); delta_buf and
// mom_buf (buf_dtype): contiguous (num_examples, C, H+2p, W+2p), their windows written (mom's read first); grad_l1:
// one fp32 on the device (the batch's ‖g‖₁); index/offsets/flips as atas_step's.
struct PgiStepOperands {
  void* delta_buf;
  void* mom_buf;
  DType buf_dtype;
  const int64_t* index;
  const int64_t* offsets;
  const bool* flips;
  const void* grad;
  DType grad_dtype;
  const float* grad_l1;
  const void* x_adv;
  const void* x;
  void* out;
  DType dtype;
};

// pgi_step: per window element, d0 = x_adv - x, m = g / l1 + decay·mom (IEEE division; each product and sum rounded
// on its own), next = box(clamp(d0 + eps·sign(m), -eps, eps), x), out = clamp(min(max((x + d0) + eps·sign(g), x - eps),
// x + eps), 0, 1); mom's window gets m and delta's window gets next. One launch, no scratch.
cudaError_t launch_pgi_step(const PgiStepOperands& op, AtasShape shape, float eps, float decay, cudaStream_t stream);

// --------------------------------------------------------------------------------------------------------- pgd_step
// out = box(clamp(delta + alpha·sign(grad), -eps, eps), x) on rows with active[b] (all rows if active == nullptr);
// other rows are a bit copy of delta. Shapes as zerograd_step; active: (batch,) bool or nullptr.
cudaError_t launch_pgd_step(const void* delta, const void* grad, const void* x, const bool* active, void* out,
                            DType dtype, DType grad_dtype, int64_t batch, int64_t row_numel, float eps, float alpha,
                            cudaStream_t stream);

// ----------------------------------------------------------------------------------------------------- uniform_init
// Philox4x32-10 key and counter base, as taken from torch's CUDA generator (at::PhiloxCudaState). Outside CUDA-graph
// capture `seed`/`offset` hold the values; during capture the kernel reads *seed_ptr and *offset_ptr +
// offset_intragraph on the device, so each replay draws fresh numbers (torch's graph-safe RNG protocol).
struct PhiloxArgs {
  uint64_t seed = 0;
  uint64_t offset = 0;
  const int64_t* seed_ptr = nullptr;
  const int64_t* offset_ptr = nullptr;
  uint64_t offset_intragraph = 0;
  bool captured = false;
};

// How far one uniform_init call advances the generator's Philox offset: element e uses the 128-bit Philox block at
// counter (offset / 4, e / 4), i.e. each subsequence e / 4 consumes 4 32-bit values.
constexpr uint64_t kUniformInitPhiloxIncrement = 4;

// out = box(u, x), u ~ U[-eps, eps] drawn in fp32 from Philox. x/out: (numel,) contiguous in `dtype`. Element e's
// value depends only on (seed, offset, e), not on the launch configuration.
cudaError_t launch_uniform_init(const void* x, void* out, DType dtype, int64_t numel, float eps, PhiloxArgs philox,
                                cudaStream_t stream);

// ------------------------------------------------------------------------------------------------------- sora_step
// How far one sora_step call advances the generator's Philox offset (the counter scheme of uniform_init, philox.cuh).
constexpr uint64_t kSoraStepPhiloxIncrement = 4;

// out = box(delta + (alpha·u)·sign(grad), x), u ~ U[0, 1) drawn in fp32 from Philox: u = (word >> 8)·2^-24 with the
// word of uniform_init's scheme (element e: word e % 4 of the block at counter (offset / 4, e / 4)); each product and
// the sum rounded on their own. delta, x, out: (numel,) contiguous in `dtype`; grad: (numel,) in `grad_dtype`;
// alpha: one fp32 in device memory, read by the kernel (never by the host). Element e's value depends only on
// (seed, offset, e) and the operands, not on the launch configuration. alpha == nullptr: cudaErrorInvalidValue.
cudaError_t launch_sora_step(const void* delta, const void* grad, const void* x, const float* alpha, void* out,
                             DType dtype, DType grad_dtype, int64_t numel, PhiloxArgs philox, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastat
