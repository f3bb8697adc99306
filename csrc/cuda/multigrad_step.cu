// MultiGrad step: votes = Σ_s sign(grads[s]) (small integers, exact in fp32; torch's sign(NaN) = 0 adds nothing),
// keep = |votes| >= 2·threshold − S, out = box(clamp(keep ? alpha·sign(votes) : 0, -eps, eps), x).
//
// Elementwise over all B·n elements with a grid-stride loop; each of the S gradients is read exactly once. When the
// element count is a multiple of 4 and the pointers are aligned, every access moves 4 elements (16 bytes for fp32);
// otherwise scalar accesses.
#include "kernel_utils.cuh"

namespace fastat {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float multigrad_value(float votes, float x, float min_votes, float eps, float alpha) {
  const float step = fabsf(votes) >= min_votes ? signed_step(votes, alpha) : 0.f;
  return box(clamp_nan(step, -eps, eps), x);
}

template <typename G, typename D, bool kVec>
__global__ void __launch_bounds__(kThreads)
    multigrad_step_kernel(const G* __restrict__ grads,  // (S, numel)
                          const D* __restrict__ x,      // (numel,)
                          D* __restrict__ out,          // (numel,)
                          int64_t num_starts, int64_t numel, float min_votes, float eps, float alpha) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  if constexpr (kVec) {  // numel % 4 == 0: every start's slice stays pack-aligned
    const auto* x4 = reinterpret_cast<const Pack4<D>*>(x);
    auto* o4 = reinterpret_cast<Pack4<D>*>(out);
    for (int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; p < numel / 4; p += stride) {
      float votes[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
      for (int64_t s = 0; s < num_starts; ++s) {
        const Pack4<G> gv = reinterpret_cast<const Pack4<G>*>(grads + s * numel)[p];
#pragma unroll
        for (int j = 0; j < 4; ++j) votes[j] += sign_of(to_float(gv.v[j]));
      }
      const Pack4<D> xv = x4[p];
      Pack4<D> r;
#pragma unroll
      for (int j = 0; j < 4; ++j)
        r.v[j] = from_float<D>(multigrad_value(votes[j], to_float(xv.v[j]), min_votes, eps, alpha));
      o4[p] = r;
    }
  } else {
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < numel; i += stride) {
      float votes = 0.f;
#pragma unroll 4
      for (int64_t s = 0; s < num_starts; ++s) votes += sign_of(to_float(grads[s * numel + i]));
      out[i] = from_float<D>(multigrad_value(votes, to_float(x[i]), min_votes, eps, alpha));
    }
  }
}

template <typename G, typename D>
cudaError_t launch_typed(const G* grads, const D* x, D* out, int64_t num_starts, int64_t numel, float min_votes,
                         float eps, float alpha, cudaStream_t stream) {
  const bool vec = numel % 4 == 0 && aligned_for_pack4<G>(grads) && aligned_for_pack4<D>(x) &&
                   aligned_for_pack4<D>(out);
  const int64_t work = vec ? numel / 4 : numel;
  const dim3 grid(grid_stride_blocks(work, kThreads));
  if (vec)
    multigrad_step_kernel<G, D, true><<<grid, kThreads, 0, stream>>>(grads, x, out, num_starts, numel, min_votes, eps,
                                                                      alpha);
  else
    multigrad_step_kernel<G, D, false><<<grid, kThreads, 0, stream>>>(grads, x, out, num_starts, numel, min_votes,
                                                                       eps, alpha);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_multigrad_step(const void* grads, const void* x, void* out, DType dtype, DType grad_dtype,
                                  int64_t num_starts, int64_t numel, int64_t min_votes, float eps, float alpha,
                                  cudaStream_t stream) {
  if (numel <= 0) return cudaSuccess;
  if (num_starts <= 0) return cudaErrorInvalidValue;
  const float min_votes_f = static_cast<float>(min_votes);  // small integer: exact
  FASTAT_CUDA_DISPATCH(dtype, D, FASTAT_CUDA_DISPATCH(grad_dtype, G, {
    return launch_typed<G, D>(static_cast<const G*>(grads), static_cast<const D*>(x), static_cast<D*>(out),
                              num_starts, numel, min_votes_f, eps, alpha, stream);
  }))
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fastat
