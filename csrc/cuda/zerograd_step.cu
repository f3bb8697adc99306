// ZeroGrad step: out = box(clamp(delta + alpha·sign(g)·[|g| >= tau], -eps, eps), x), tau = torch.quantile(|g_row|, q).
//
// tau is exact (row_quantile.cuh: radix selection of the two order statistics + torch's lerp); a row with a NaN has
// tau = NaN, keeps nothing and only re-projects δ. Selection, mask, sign, clamp and box run in one kernel per launch
// path, chosen from the row length only (no sort, no host sync, no data-dependent launch):
//  * n <= 16384: one 256-thread block per row; the row's g lives in shared memory (g is read once).
//  * n <= 8·40960 on GPUs with thread-block clusters (sm_90+): a cluster of 2..8 blocks per row, each keeping its
//    slice of g in shared memory; histograms are summed across the cluster through distributed shared memory.
//  * otherwise (or where the shared memory cannot be had, the cluster does not fit per cudaOccupancyMaxActiveClusters,
//    or its launch is refused): one 512-thread block per row re-reading g from global/L2 on each pass.
#include <algorithm>
#include <cmath>

#include "cluster.cuh"
#include "row_quantile.cuh"

namespace fastat {
namespace cuda {
namespace {

using namespace row_quantile;  // NOLINT: the selection machinery of this op

constexpr int kSmemThreads = 256;
constexpr int kClusterThreads = 512;
constexpr int kStreamThreads = 512;
constexpr int64_t kSmemRowMax = 16384;         // elements: 64 KB of dynamic shared memory
constexpr int64_t kClusterChunkTarget = 16384;  // elements per cluster block we aim for
constexpr int64_t kClusterChunkMax = 40960;     // elements per cluster block at most (160 KB)

template <int kThreads, int kUnroll, typename Src, typename D>
__device__ void apply_step(const Src& src, const D* __restrict__ delta, const D* __restrict__ x, D* __restrict__ out,
                           int64_t m, float tau, float eps, float alpha) {
  for (int64_t base = 0; base < m; base += static_cast<int64_t>(kThreads) * kUnroll) {
    float g[kUnroll], d[kUnroll], xv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads + threadIdx.x;
      g[u] = d[u] = xv[u] = 0.f;
      if (i < m) {
        g[u] = __uint_as_float(src.raw(i));
        d[u] = to_float(delta[i]);
        xv[u] = to_float(x[i]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads + threadIdx.x;
      if (i < m) {
        const float step = fabsf(g[u]) >= tau ? signed_step(g[u], alpha) : 0.f;  // NaN tau keeps nothing
        out[i] = from_float<D>(box(clamp_nan(__fadd_rn(d[u], step), -eps, eps), xv[u]));
      }
    }
  }
}

// Asks L2 for m elements at p (one request per 128-byte line), so that the apply phase, which runs after the
// selection, finds delta and x there instead of waiting on DRAM with the SM otherwise idle.
template <int kThreads, typename T>
__device__ __forceinline__ void prefetch_l2(const T* p, int64_t m) {
  constexpr int64_t kLine = 128 / sizeof(T);
  for (int64_t i = threadIdx.x * kLine; i < m; i += kThreads * kLine) asm volatile("prefetch.L2 [%0];" ::"l"(p + i));
}

// One block (kCluster = false) or one cluster (kCluster = true) per row; the block's slice of g in shared memory.
template <typename G, typename D, int kThreads, bool kCluster>
__global__ void __launch_bounds__(kThreads)
    zerograd_smem_kernel(const D* __restrict__ delta,  // (B, n)
                         const G* __restrict__ grad,   // (B, n)
                         const D* __restrict__ x,      // (B, n)
                         D* __restrict__ out,          // (B, n)
                         int64_t n, int64_t chunk, QuantileArgs qa, float eps, float alpha) {
  extern __shared__ uint4 zerograd_dynamic_smem[];
  uint32_t* bits = reinterpret_cast<uint32_t*>(zerograd_dynamic_smem);  // chunk entries
  __shared__ SelectShared<kCluster> sh;
  uint32_t rank32, blocks32;
  cluster_position<kCluster>(rank32, blocks32);
  const int64_t rank = rank32, blocks = blocks32;
  const int64_t row = blockIdx.x / blocks;
  const int64_t begin = rank * chunk;
  const int64_t m = begin >= n ? 0 : (n - begin < chunk ? n - begin : chunk);
  const int64_t offset = row * n + begin;
  const G* g = grad + offset;
  constexpr int kUnroll = 4;
  for (int64_t base = 0; base < m; base += kThreads * kUnroll) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads + threadIdx.x;
      v[u] = i < m ? to_float(g[i]) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads + threadIdx.x;
      if (i < m) bits[i] = __float_as_uint(v[u]);
    }
  }
  prefetch_l2<kThreads>(delta + offset, m);
  prefetch_l2<kThreads>(x + offset, m);
  __syncthreads();
  const SmemRow src{bits};
  const float tau = select_tau<kThreads, kUnroll, kCluster>(src, m, qa, sh);
  apply_step<kThreads, kUnroll>(src, delta + offset, x + offset, out + offset, m, tau, eps, alpha);
}

// One block per row, g re-read from global memory (L2) on every pass: any row length.
template <typename G, typename D, int kThreads>
__global__ void __launch_bounds__(kThreads)
    zerograd_stream_kernel(const D* __restrict__ delta, const G* __restrict__ grad, const D* __restrict__ x,
                           D* __restrict__ out, int64_t n, QuantileArgs qa, float eps, float alpha) {
  __shared__ SelectShared<false> sh;
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * n;
  const GlobalRow<G> src{grad + offset};
  constexpr int kUnroll = 8;
  const float tau = select_tau<kThreads, kUnroll, false>(src, n, qa, sh);
  apply_step<kThreads, kUnroll>(src, delta + offset, x + offset, out + offset, n, tau, eps, alpha);
}

// Makes `bytes` of dynamic shared memory available to `kernel`, whose launch site never asks for more than
// `max_bytes`. The default limit is 48 KB minus the kernel's static shared memory (8 KB / 16 KB of SelectShared here),
// so below 40 KB nothing is needed; above it the kernel is opted in once per (kernel, device) (dynamic_smem_limit).
cudaError_t set_smem(const void* kernel, int64_t bytes, int64_t max_bytes) {
  if (bytes + static_cast<int64_t>(sizeof(SelectShared<true>)) <= 40 * 1024) return cudaSuccess;
  return bytes <= max_bytes && bytes <= dynamic_smem_limit(kernel, max_bytes) ? cudaSuccess : cudaErrorInvalidValue;
}

template <typename G, typename D>
cudaError_t launch_typed(const D* delta, const G* grad, const D* x, D* out, int64_t batch, int64_t n,
                         QuantileArgs qa, float eps, float alpha, cudaStream_t stream) {
  constexpr int64_t kKey = sizeof(uint32_t);  // shared-memory bytes per element of g
  if (n <= kSmemRowMax) {  // one block per row (streaming below if the device cannot give it the shared memory)
    auto kernel = zerograd_smem_kernel<G, D, kSmemThreads, false>;
    const int64_t bytes = n * kKey;
    if (set_smem(reinterpret_cast<const void*>(kernel), bytes, kSmemRowMax * kKey) == cudaSuccess) {
      kernel<<<static_cast<unsigned>(batch), kSmemThreads, bytes, stream>>>(delta, grad, x, out, n, n, qa, eps, alpha);
      return cudaGetLastError();
    }
  } else if (n <= kMaxCluster * kClusterChunkMax && batch * kMaxCluster <= kMaxGridX && cluster_launch_supported()) {
    const int64_t wanted = (n + kClusterChunkTarget - 1) / kClusterChunkTarget;
    const int blocks = static_cast<int>(std::min<int64_t>(kMaxCluster, std::max<int64_t>(2, wanted)));
    const int64_t chunk = ((n + blocks - 1) / blocks + 3) / 4 * 4;  // <= kClusterChunkMax
    const int64_t bytes = chunk * kKey;
    auto kernel = zerograd_smem_kernel<G, D, kClusterThreads, true>;
    const void* fn = reinterpret_cast<const void*>(kernel);
    if (set_smem(fn, bytes, kClusterChunkMax * kKey) == cudaSuccess &&
        cluster_fits(fn, blocks, kClusterThreads, bytes)) {
      const ClusterLaunch launch(static_cast<unsigned>(batch * blocks), blocks, kClusterThreads, bytes, stream);
      if (cudaLaunchKernelEx(&launch.config, kernel, delta, grad, x, out, n, chunk, qa, eps, alpha) == cudaSuccess)
        return cudaGetLastError();
      (void)cudaGetLastError();  // refused after all (resources taken at run time): clear it, stream instead
    }
  }
  zerograd_stream_kernel<G, D, kStreamThreads>
      <<<static_cast<unsigned>(batch), kStreamThreads, 0, stream>>>(delta, grad, x, out, n, qa, eps, alpha);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_zerograd_step(const void* delta, const void* grad, const void* x, void* out, DType dtype,
                                 DType grad_dtype, int64_t batch, int64_t row_numel, float eps, float alpha,
                                 int64_t rank_lo, int64_t rank_hi, float rank_w, cudaStream_t stream) {
  if (batch <= 0 || row_numel <= 0) return cudaSuccess;
  if (batch > kMaxGridX || row_numel >= (int64_t{1} << 32)) return cudaErrorInvalidValue;
  if (rank_lo < 0 || rank_hi < rank_lo || rank_hi > rank_lo + 1 || rank_hi >= row_numel) return cudaErrorInvalidValue;
  const QuantileArgs qa = quantile_args(rank_lo, rank_hi, rank_w);
  FASTAT_CUDA_DISPATCH(dtype, D, FASTAT_CUDA_DISPATCH(grad_dtype, G, {
    return launch_typed<G, D>(static_cast<const D*>(delta), static_cast<const G*>(grad), static_cast<const D*>(x),
                              static_cast<D*>(out), batch, row_numel, qa, eps, alpha, stream);
  }))
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fastat
