// SORA's random-scaled step in one launch: draw, scale, step, clamp. out = box(delta + (alpha·u)·sign(g), x) with
// u ~ U[0, 1) drawn in fp32 from Philox4x32-10 (philox.cuh: uniform_init's counter scheme, element e takes word e % 4
// of the block at counter (offset / 4, e / 4), u = (word >> 8)·2^-24); no ε-projection (SecondOrderAT/SORA
// `src/attacks/sora.py`). The binding reserves kSoraStepPhiloxIncrement offsets of torch's CUDA generator per call.
//
// alpha is one fp32 in device memory, read by the kernel: SORA's α follows a running estimate kept on the device, so
// the host never reads it and the step can be captured in a CUDA graph (as can the draw: see philox.cuh).
//
// Grid-stride over groups of 4 elements, one Philox call per group. When every pointer is aligned, a full group moves
// with one 8/16-byte access per operand; the ragged last group (numel % 4 != 0) and unaligned operands use scalar
// accesses. Each product and the sum are rounded on their own (no FMA), as the reference's separate torch ops are.
#include "kernel_utils.cuh"
#include "philox.cuh"

namespace fastat {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// box(d + (alpha·u)·sign(g), x): sign(0) = sign(NaN) = 0; the product by sign is written out, not selected, so signed
// zeros and a NaN alpha come out as torch's (alpha·u)·sign(g) gives them.
__device__ __forceinline__ float sora_value(float d, float g, float x, float alpha, uint32_t bits) {
  const float step = __fmul_rn(__fmul_rn(alpha, uniform01(bits)), sign_of(g));
  return box(__fadd_rn(d, step), x);
}

template <typename G, typename D, bool kVec>
__global__ void __launch_bounds__(kThreads)
    sora_step_kernel(const D* __restrict__ delta,    // (numel,)
                     const G* __restrict__ grad,     // (numel,)
                     const D* __restrict__ x,        // (numel,)
                     const float* __restrict__ alpha,  // one value
                     D* __restrict__ out,            // (numel,)
                     int64_t numel, PhiloxArgs philox) {
  const PhiloxStream rng = philox_stream(philox);
  const float a = *alpha;
  const int64_t groups = (numel + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < groups; j += stride) {
    const uint4 r = philox_group(rng, static_cast<uint64_t>(j));
    const uint32_t words[4] = {r.x, r.y, r.z, r.w};
    const int64_t first = 4 * j;
    if (kVec && first + 4 <= numel) {
      const Pack4<D> dv = reinterpret_cast<const Pack4<D>*>(delta)[j];
      const Pack4<G> gv = reinterpret_cast<const Pack4<G>*>(grad)[j];
      const Pack4<D> xv = reinterpret_cast<const Pack4<D>*>(x)[j];
      Pack4<D> res;
#pragma unroll
      for (int l = 0; l < 4; ++l)
        res.v[l] = from_float<D>(sora_value(to_float(dv.v[l]), to_float(gv.v[l]), to_float(xv.v[l]), a, words[l]));
      reinterpret_cast<Pack4<D>*>(out)[j] = res;
    } else {
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        const int64_t e = first + l;
        if (e < numel)
          out[e] = from_float<D>(sora_value(to_float(delta[e]), to_float(grad[e]), to_float(x[e]), a, words[l]));
      }
    }
  }
}

template <typename G, typename D>
cudaError_t launch_typed(const D* delta, const G* grad, const D* x, const float* alpha, D* out, int64_t numel,
                         PhiloxArgs philox, cudaStream_t stream) {
  const dim3 grid(grid_stride_blocks((numel + 3) / 4, kThreads));
  const bool vec = aligned_for_pack4<D>(delta) && aligned_for_pack4<G>(grad) && aligned_for_pack4<D>(x) &&
                   aligned_for_pack4<D>(out);
  auto kernel = vec ? sora_step_kernel<G, D, true> : sora_step_kernel<G, D, false>;
  kernel<<<grid, kThreads, 0, stream>>>(delta, grad, x, alpha, out, numel, philox);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_sora_step(const void* delta, const void* grad, const void* x, const float* alpha, void* out,
                             DType dtype, DType grad_dtype, int64_t numel, PhiloxArgs philox, cudaStream_t stream) {
  if (numel <= 0) return cudaSuccess;
  if (alpha == nullptr) return cudaErrorInvalidValue;
  if (philox.captured && (philox.seed_ptr == nullptr || philox.offset_ptr == nullptr)) return cudaErrorInvalidValue;
  FASTAT_CUDA_DISPATCH(dtype, D, FASTAT_CUDA_DISPATCH(grad_dtype, G, {
    return launch_typed<G, D>(static_cast<const D*>(delta), static_cast<const G*>(grad), static_cast<const D*>(x),
                              alpha, static_cast<D*>(out), numel, philox, stream);
  }))
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fastat
