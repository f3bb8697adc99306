// Random start: out = box(u, x), u ~ U[-eps, eps] drawn in fp32 from Philox4x32-10 (Salmon et al., SC'11).
//
// Element e takes 32-bit word e % 4 of the Philox block at counter (offset / 4, e / 4) under key = seed, where
// (seed, offset) come from torch's CUDA generator (the binding advances it by kUniformInitPhiloxIncrement per call,
// under the generator's mutex). Results therefore depend only on the generator state and e: reproducible for a seed,
// independent of the launch configuration, and CUDA-graph safe (under capture seed/offset are read on the device).
// The generator and the counter scheme are shared with sora_step.cu (philox.cuh).
#include "kernel_utils.cuh"
#include "philox.cuh"

namespace fastat {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// 24 random bits -> [0, 1 - 2^-24] -> [-eps, eps].
__device__ __forceinline__ float uniform_pm(uint32_t bits, float eps) {
  return __fmaf_rn(uniform01(bits), eps + eps, -eps);
}

template <typename D>
__global__ void __launch_bounds__(kThreads)
    uniform_init_kernel(const D* __restrict__ x,  // (numel,)
                        D* __restrict__ out,      // (numel,)
                        int64_t numel, float eps, PhiloxArgs philox) {
  const PhiloxStream rng = philox_stream(philox);
  const int64_t groups = (numel + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < groups; j += stride) {
    const uint4 r = philox_group(rng, static_cast<uint64_t>(j));
    const uint32_t words[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int64_t e = 4 * j + l;
      if (e < numel) out[e] = from_float<D>(box(uniform_pm(words[l], eps), to_float(x[e])));
    }
  }
}

}  // namespace

cudaError_t launch_uniform_init(const void* x, void* out, DType dtype, int64_t numel, float eps, PhiloxArgs philox,
                                cudaStream_t stream) {
  if (numel <= 0) return cudaSuccess;
  if (philox.captured && (philox.seed_ptr == nullptr || philox.offset_ptr == nullptr)) return cudaErrorInvalidValue;
  const dim3 grid(grid_stride_blocks((numel + 3) / 4, kThreads));
  FASTAT_CUDA_DISPATCH(dtype, D, {
    uniform_init_kernel<D><<<grid, kThreads, 0, stream>>>(static_cast<const D*>(x), static_cast<D*>(out), numel, eps,
                                                          philox);
    return cudaGetLastError();
  })
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fastat
