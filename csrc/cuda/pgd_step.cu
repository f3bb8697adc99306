// PGD step: out = box(clamp(delta + alpha·sign(g), -eps, eps), x) on rows with active[b]; other rows copy delta's bits.
//
// Grid: (row, tile) pairs, one division per block to find the row; a tile is 4096 consecutive elements of one row.
// When the row length is a multiple of 4 and every pointer is aligned, each thread moves 4 elements per 8/16-byte
// access; otherwise it falls back to scalar accesses. Inactive rows read only delta.
#include "kernel_utils.cuh"

namespace fastat {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kTile = 4096;  // elements per block; a multiple of 4

__device__ __forceinline__ float pgd_value(float d, float g, float x, float eps, float alpha) {
  return box(clamp_nan(__fadd_rn(d, signed_step(g, alpha)), -eps, eps), x);
}

template <typename G, typename D, bool kVec>
__global__ void __launch_bounds__(kThreads)
    pgd_step_kernel(const D* __restrict__ delta,   // (B, n)
                    const G* __restrict__ grad,    // (B, n)
                    const D* __restrict__ x,       // (B, n)
                    const bool* __restrict__ active,  // (B,) or nullptr
                    D* __restrict__ out,           // (B, n)
                    int64_t n, int64_t tiles_per_row, float eps, float alpha) {
  const int64_t row = blockIdx.x / tiles_per_row;
  const int64_t begin = (blockIdx.x - row * tiles_per_row) * kTile;
  const int64_t end = n - begin < kTile ? n : begin + kTile;
  const int64_t offset = row * n;
  const bool on = active == nullptr || active[row];
  if constexpr (kVec) {  // n % 4 == 0, so begin, end and offset are multiples of 4
    const auto* d4 = reinterpret_cast<const Pack4<D>*>(delta + offset);
    const auto* g4 = reinterpret_cast<const Pack4<G>*>(grad + offset);
    const auto* x4 = reinterpret_cast<const Pack4<D>*>(x + offset);
    auto* o4 = reinterpret_cast<Pack4<D>*>(out + offset);
    for (int64_t p = begin / 4 + threadIdx.x; p < end / 4; p += kThreads) {
      const Pack4<D> dv = d4[p];
      if (!on) {
        o4[p] = dv;
        continue;
      }
      const Pack4<G> gv = g4[p];
      const Pack4<D> xv = x4[p];
      Pack4<D> r;
#pragma unroll
      for (int j = 0; j < 4; ++j)
        r.v[j] = from_float<D>(pgd_value(to_float(dv.v[j]), to_float(gv.v[j]), to_float(xv.v[j]), eps, alpha));
      o4[p] = r;
    }
  } else {
    for (int64_t i = offset + begin + threadIdx.x; i < offset + end; i += kThreads) {
      out[i] = on ? from_float<D>(pgd_value(to_float(delta[i]), to_float(grad[i]), to_float(x[i]), eps, alpha))
                  : delta[i];
    }
  }
}

template <typename G, typename D>
cudaError_t launch_typed(const D* delta, const G* grad, const D* x, const bool* active, D* out, int64_t batch,
                         int64_t n, float eps, float alpha, cudaStream_t stream) {
  const int64_t tiles_per_row = (n + kTile - 1) / kTile;
  if (batch * tiles_per_row > kMaxGridX) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(batch * tiles_per_row));
  const bool vec = n % 4 == 0 && aligned_for_pack4<D>(delta) && aligned_for_pack4<G>(grad) &&
                   aligned_for_pack4<D>(x) && aligned_for_pack4<D>(out);
  auto kernel = vec ? pgd_step_kernel<G, D, true> : pgd_step_kernel<G, D, false>;
  kernel<<<grid, kThreads, 0, stream>>>(delta, grad, x, active, out, n, tiles_per_row, eps, alpha);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_pgd_step(const void* delta, const void* grad, const void* x, const bool* active, void* out,
                            DType dtype, DType grad_dtype, int64_t batch, int64_t row_numel, float eps, float alpha,
                            cudaStream_t stream) {
  if (batch <= 0 || row_numel <= 0) return cudaSuccess;
  FASTAT_CUDA_DISPATCH(dtype, D, FASTAT_CUDA_DISPATCH(grad_dtype, G, {
    return launch_typed<G, D>(static_cast<const D*>(delta), static_cast<const G*>(grad), static_cast<const D*>(x),
                              active, static_cast<D*>(out), batch, row_numel, eps, alpha, stream);
  }))
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fastat
