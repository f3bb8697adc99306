// ATAS: the start-point gather and the adaptive step with its write-back into the per-example buffer.
//
// Window mapping (both ops): output element (b, c, i, j) <-> delta_buf[idx_b, c, r_b + i, c_b + j'], j' = W-1-j if
// flips[b] else j. idx_b = index[b] clamped into [0, N-1], r_b = offsets[b, 0] clamped into [0, Hp-H], c_b =
// offsets[b, 1] clamped into [0, Wp-W]: whatever the values, no access leaves delta_buf (validated inputs are in range
// and unchanged by the clamp).
//
// atas_step is one launch (the fused path) wherever it can be:
//  * fused: each row is split into `blocks` contiguous slices, one 256-thread block each; the blocks of a row form a
//    thread-block cluster (sm_90+; a single block needs no cluster). Every block reads v_buf[idx_b] and sums g² over
//    its slice in fp64; the cluster exchanges the partials through distributed shared memory and every block adds them
//    in rank order (so all blocks of the row agree, and repeated calls are bit-identical); block 0 stores v after a
//    cluster barrier that orders it after every block's read of the old v. The update then re-reads the slice of g
//    (from L2: the block has just streamed it) with x_adv and x and writes out and the buffer window. Warmup skips
//    the reduction.
//  * split (GPUs without clusters unless the batch alone fills the GPU with one block per row, a cluster that does not
//    fit (cudaOccupancyMaxActiveClusters = 0) or whose launch is refused, rows of 2^31 elements or more): two
//    launches, the only path that needs scratch memory:
//    (1) per (row, 16384-element chunk) an fp64 partial of Σg² and the old v_buf[idx_b] copied to scratch; (2) per
//    (plane, tile) the update: every block sums its row's partials in a fixed order, forms v and the step, and the
//    first block of the row stores v (kernel 2 never reads v_buf, so there is no read/write race).
// FASTAT_CUDA_ATAS_PATH=fused|split forces a path (tests use it; "fused" still falls back where it cannot run).
#include <cooperative_groups.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cluster.cuh"
#include "kernel_utils.cuh"

namespace fastat {
namespace cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;
constexpr int64_t kPlaneTile = 1024;  // elements of one (b, c) plane per block
constexpr int kNormThreads = 512;
constexpr int64_t kNormChunk = 16384;  // elements of a row per partial sum

struct Window {
  int64_t example;  // clamped index[b]
  int64_t base;     // offset of (example, c, r_b, c_b) in delta_buf
  bool flip;
};

__device__ __forceinline__ int64_t clamp_index(int64_t v, int64_t hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

__device__ __forceinline__ Window window_of(const int64_t* index, const int64_t* offsets, const bool* flips,
                                            const AtasShape& s, int64_t b, int64_t c) {
  Window w;
  w.example = clamp_index(index[b], s.num_examples - 1);
  const int64_t r0 = clamp_index(offsets[2 * b], s.buf_height - s.height);
  const int64_t c0 = clamp_index(offsets[2 * b + 1], s.buf_width - s.width);
  w.base = ((w.example * s.channels + c) * s.buf_height + r0) * s.buf_width + c0;
  w.flip = flips[b];
  return w;
}

// The contract's per-row update, shared by the split and fused paths: v = β·v_old + (1−β)·‖g‖² (each product rounded,
// then the sum: no FMA); v_buf gets v; step = clamp(γ/c / (1 + √v / c), step_min, step_max).
__device__ __forceinline__ float atas_v(const AtasStepParams& prm, float v_old, double sq_norm) {
  return __fadd_rn(__fmul_rn(prm.beta, v_old), __fmul_rn(prm.one_minus_beta, static_cast<float>(sq_norm)));
}

__device__ __forceinline__ float atas_step_size(const AtasStepParams& prm, float v) {
  const float denom = __fadd_rn(1.f, __fdiv_rn(__fsqrt_rn(v), prm.c));
  return clamp_nan(__fdiv_rn(prm.gamma_over_c, denom), prm.step_min, prm.step_max);
}

// One element: clamp(min(max(x_adv + step·sign(g), x − ε), x + ε), 0, 1).
__device__ __forceinline__ float atas_project(float x_adv, float g, float x, float step, float eps) {
  const float r = __fadd_rn(x_adv, __fmul_rn(step, sign_of(g)));
  return clamp_nan(min_nan(max_nan(r, __fsub_rn(x, eps)), __fadd_rn(x, eps)), 0.f, 1.f);
}

template <typename B, typename D>
__global__ void __launch_bounds__(kThreads)
    atas_gather_kernel(const B* __restrict__ delta_buf,  // (N, C, Hp, Wp)
                       const int64_t* __restrict__ index, const int64_t* __restrict__ offsets,
                       const bool* __restrict__ flips,
                       const D* __restrict__ x,  // (B, C, H, W)
                       D* __restrict__ out,      // (B, C, H, W)
                       AtasShape s, int64_t tiles_per_plane) {
  const int64_t plane = blockIdx.x / tiles_per_plane;
  const int64_t b = plane / s.channels;
  const Window w = window_of(index, offsets, flips, s, b, plane - b * s.channels);
  const int width = static_cast<int>(s.width), plane_numel = static_cast<int>(s.height * s.width);
  const int begin = static_cast<int>((blockIdx.x - plane * tiles_per_plane) * kPlaneTile);
  const int end = plane_numel - begin < kPlaneTile ? plane_numel : begin + static_cast<int>(kPlaneTile);
  for (int e = begin + threadIdx.x; e < end; e += kThreads) {
    const int i = e / width, j = e - i * width;
    const int64_t xi = plane * plane_numel + e;
    const float d = to_float(delta_buf[w.base + i * s.buf_width + (w.flip ? width - 1 - j : j)]);
    out[xi] = from_float<D>(clamp_nan(__fadd_rn(to_float(x[xi]), d), 0.f, 1.f));
  }
}

template <typename G>
__global__ void __launch_bounds__(kNormThreads)
    atas_norm_kernel(const G* __restrict__ grad,  // (B, n)
                     const float* __restrict__ v_buf, const int64_t* __restrict__ index, int64_t num_examples,
                     int64_t n, int64_t chunks,
                     double* __restrict__ partial,  // (B, chunks)
                     float* __restrict__ v_old) {   // (B,)
  __shared__ double scratch[32];
  const int64_t row = blockIdx.x / chunks, chunk = blockIdx.x - row * chunks;
  const int64_t begin = chunk * kNormChunk;
  const int64_t end = n - begin < kNormChunk ? n : begin + kNormChunk;
  const G* g = grad + row * n;
  double acc = 0.0;
#pragma unroll 8
  for (int64_t i = begin + threadIdx.x; i < end; i += kNormThreads) {
    const double v = to_float(g[i]);
    acc += v * v;  // exact product of two fp32 values; an FMA here rounds the same
  }
  acc = block_sum<kNormThreads>(acc, scratch);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = acc;
    if (chunk == 0) v_old[row] = v_buf[clamp_index(index[row], num_examples - 1)];
  }
}

template <typename G, typename D, typename B>
__global__ void __launch_bounds__(kThreads)
    atas_update_kernel(B* __restrict__ delta_buf,  // (N, C, Hp, Wp), window written
                       float* __restrict__ v_buf,  // (N,), v written (not warmup)
                       const int64_t* __restrict__ index, const int64_t* __restrict__ offsets,
                       const bool* __restrict__ flips,
                       const G* __restrict__ grad,   // (B, C, H, W)
                       const D* __restrict__ x_adv,  // (B, C, H, W)
                       const D* __restrict__ x,      // (B, C, H, W)
                       D* __restrict__ out,          // (B, C, H, W)
                       AtasShape s, AtasStepParams prm,
                       const double* __restrict__ partial,  // (B, chunks); unused when warmup
                       const float* __restrict__ v_old,     // (B,); unused when warmup
                       int64_t chunks, int64_t tiles_per_plane) {
  const int64_t plane = blockIdx.x / tiles_per_plane;
  const int64_t tile = blockIdx.x - plane * tiles_per_plane;
  const int64_t b = plane / s.channels, c = plane - b * s.channels;
  const Window w = window_of(index, offsets, flips, s, b, c);
  float step = prm.eps;
  if (!prm.warmup) {
    double sum = 0.0;
    for (int64_t k = 0; k < chunks; ++k) sum += partial[b * chunks + k];
    const float v = atas_v(prm, v_old[b], sum);
    if (c == 0 && tile == 0 && threadIdx.x == 0) v_buf[w.example] = v;
    step = atas_step_size(prm, v);
  }
  const int width = static_cast<int>(s.width), plane_numel = static_cast<int>(s.height * s.width);
  const int begin = static_cast<int>(tile * kPlaneTile);
  const int end = plane_numel - begin < kPlaneTile ? plane_numel : begin + static_cast<int>(kPlaneTile);
  for (int e = begin + threadIdx.x; e < end; e += kThreads) {
    const int i = e / width, j = e - i * width;
    const int64_t xi = plane * plane_numel + e;
    const float xv = to_float(x[xi]);
    const float xa = atas_project(to_float(x_adv[xi]), to_float(grad[xi]), xv, step, prm.eps);
    out[xi] = from_float<D>(xa);
    delta_buf[w.base + i * s.buf_width + (w.flip ? width - 1 - j : j)] = from_float<B>(__fsub_rn(xa, xv));
  }
}

// The fused path: grid = batch × blocks, the `blocks` blocks of a row being one cluster (kCluster) or a single block.
// Block `rank` of row b owns elements [rank·chunk, min(n, (rank+1)·chunk)) of the row (possibly none); every block
// takes part in every barrier whatever its share.
template <typename G, typename D, typename B, bool kCluster>
__global__ void __launch_bounds__(kThreads)
    atas_step_fused_kernel(B* __restrict__ delta_buf,  // (N, C, Hp, Wp), window written
                           float* v_buf,               // (N,), read then written (not warmup)
                           const int64_t* __restrict__ index, const int64_t* __restrict__ offsets,
                           const bool* __restrict__ flips,
                           const G* __restrict__ grad,   // (B, C, H, W)
                           const D* __restrict__ x_adv,  // (B, C, H, W)
                           const D* __restrict__ x,      // (B, C, H, W)
                           D* __restrict__ out,          // (B, C, H, W)
                           AtasShape s, AtasStepParams prm, uint32_t n, uint32_t chunk) {
  __shared__ double scratch[32];
  uint32_t rank, blocks;
  cluster_position<kCluster>(rank, blocks);
  const int64_t row = blockIdx.x / blocks;
  const uint32_t begin = rank * chunk < n ? rank * chunk : n;
  const uint32_t end = n - begin < chunk ? n : begin + chunk;
  const int64_t row_offset = row * static_cast<int64_t>(n);
  const int64_t example = clamp_index(index[row], s.num_examples - 1);
  const G* g = grad + row_offset;

  float step = prm.eps;
  if (!prm.warmup) {
    const float v_old = v_buf[example];  // every thread reads it before the barriers below; block 0 writes after
    double acc = 0.0;
#pragma unroll 8
    for (uint32_t i = begin + threadIdx.x; i < end; i += kThreads) {
      const double v = to_float(g[i]);
      acc += v * v;  // exact product of two fp32 values
    }
    double sum = block_sum<kThreads>(acc, scratch);  // ends with __syncthreads
    if constexpr (kCluster) {
#if defined(_CG_HAS_CLUSTER_GROUP)
      __shared__ double block_partial;  // read by the other blocks of the cluster
      cg::cluster_group cluster = cg::this_cluster();
      if (threadIdx.x == 0) block_partial = sum;
      cluster.sync();  // partials visible; every block's read of v_old is done
      sum = 0.0;
      for (uint32_t r = 0; r < blocks; ++r) sum += *cluster.map_shared_rank(&block_partial, r);
      cluster.sync();  // peers' reads of block_partial done before any block exits
#endif
    }
    const float v = atas_v(prm, v_old, sum);
    if (rank == 0 && threadIdx.x == 0) v_buf[example] = v;
    step = atas_step_size(prm, v);
  }

  const uint32_t width = static_cast<uint32_t>(s.width);
  const uint32_t plane_numel = static_cast<uint32_t>(s.height * s.width);
  const int64_t r0 = clamp_index(offsets[2 * row], s.buf_height - s.height);
  const int64_t c0 = clamp_index(offsets[2 * row + 1], s.buf_width - s.width);
  const bool flip = flips[row];
  B* window = delta_buf + (example * s.channels * s.buf_height + r0) * s.buf_width + c0;  // (example, 0, r0, c0)
  const int64_t buf_plane = s.buf_height * s.buf_width;
  constexpr int kUnroll = 4;
  for (uint32_t base = begin; base < end; base += kThreads * kUnroll) {
    float gv[kUnroll], xa[kUnroll], xv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t e = base + u * kThreads + threadIdx.x;
      gv[u] = xa[u] = xv[u] = 0.f;
      if (e < end) {
        gv[u] = to_float(g[e]);
        xa[u] = to_float(x_adv[row_offset + e]);
        xv[u] = to_float(x[row_offset + e]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t e = base + u * kThreads + threadIdx.x;
      if (e < end) {
        const uint32_t c = e / plane_numel, p = e - c * plane_numel;
        const uint32_t i = p / width, j = p - i * width;
        const float r = atas_project(xa[u], gv[u], xv[u], step, prm.eps);
        out[row_offset + e] = from_float<D>(r);
        window[c * buf_plane + static_cast<int64_t>(i) * s.buf_width + (flip ? width - 1 - j : j)] =
            from_float<B>(__fsub_rn(r, xv[u]));
      }
    }
  }
}

int64_t norm_chunks(int64_t n) { return (n + kNormChunk - 1) / kNormChunk; }

// Planes of up to 2^31 - 1 - kPlaneTile elements, so that the int element loops of the gather and update kernels
// (e += kThreads) cannot overflow. Images of no elements (C, H or W = 0) are valid, as in the reference.
bool shape_ok(const AtasShape& s) {
  return s.channels >= 0 && s.height >= 0 && s.width >= 0 && s.num_examples > 0 && s.buf_height >= s.height &&
         s.buf_width >= s.width && s.height * s.width <= 2147483647 - kPlaneTile;
}

}  // namespace

cudaError_t launch_atas_gather(const void* delta_buf, DType buf_dtype, const int64_t* index, const int64_t* offsets,
                               const bool* flips, const void* x, void* out, DType dtype, AtasShape s,
                               cudaStream_t stream) {
  if (s.batch <= 0) return cudaSuccess;
  if (!shape_ok(s)) return cudaErrorInvalidValue;
  const int64_t tiles = (s.height * s.width + kPlaneTile - 1) / kPlaneTile;
  if (s.channels * tiles == 0) return cudaSuccess;  // empty images: nothing to gather (and no 0-block grid)
  if (s.batch * s.channels * tiles > kMaxGridX) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(s.batch * s.channels * tiles));
  FASTAT_CUDA_DISPATCH(dtype, D, FASTAT_CUDA_DISPATCH(buf_dtype, B, {
    atas_gather_kernel<B, D><<<grid, kThreads, 0, stream>>>(static_cast<const B*>(delta_buf), index, offsets, flips,
                                                            static_cast<const D*>(x), static_cast<D*>(out), s, tiles);
    return cudaGetLastError();
  }))
  return cudaErrorInvalidValue;
}

namespace {

enum class AtasPath { kAuto, kFused, kSplit };

// FASTAT_CUDA_ATAS_PATH, read on every call on purpose: the tests switch it at run time (monkeypatch.setenv), and a
// getenv is a short host-side scan of the environment (well under a microsecond, no CUDA call; CUDA-graph replays do
// not run it at all). Caching it would need a second, test-only switch to reach the extension.
AtasPath requested_path() {
  const char* env = std::getenv("FASTAT_CUDA_ATAS_PATH");
  if (env == nullptr) return AtasPath::kAuto;
  if (std::strcmp(env, "fused") == 0) return AtasPath::kFused;
  if (std::strcmp(env, "split") == 0) return AtasPath::kSplit;
  return AtasPath::kAuto;
}

constexpr int64_t kMinSliceNumel = 1024;  // a row is split into slices of at least this many elements
// The fused kernel indexes a row with uint32 and steps by up to kThreads·4 past its end: rows below 2^31 elements.
constexpr int64_t kMaxFusedRow = int64_t{1} << 31;

// Blocks per row of the fused path: enough blocks in all to give each SM ~8 (2048 threads), at most kMaxCluster per
// row, and no slice under kMinSliceNumel elements. Without cluster support only 1 is possible: then 0 (take the split
// path) where the rows would want more, since one block per row would leave most of the GPU idle.
int fused_blocks_per_row(int64_t batch, int64_t n, bool clusters) {
  const int64_t want = (8 * static_cast<int64_t>(current_sm_count()) + batch - 1) / batch;
  const int64_t most = std::max<int64_t>(1, n / kMinSliceNumel);
  const int blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, most, kMaxCluster})));
  return clusters || blocks == 1 ? blocks : 0;
}

// Launches the fused kernel with `blocks` blocks per row. *done = false (nothing launched, no error pending) where a
// cluster of that size cannot run: cudaOccupancyMaxActiveClusters says it does not fit, or the launch is refused.
template <typename G, typename D, typename B>
cudaError_t launch_fused(const AtasStepOperands& op, const AtasShape& s, const AtasStepParams& prm, int64_t n,
                         int blocks, bool* done, cudaStream_t stream) {
  auto* delta_buf = static_cast<B*>(op.delta_buf);
  const auto* grad = static_cast<const G*>(op.grad);
  const auto* x_adv = static_cast<const D*>(op.x_adv);
  const auto* x = static_cast<const D*>(op.x);
  auto* out = static_cast<D*>(op.out);
  const uint32_t chunk = static_cast<uint32_t>((n + blocks - 1) / blocks);
  const uint32_t n32 = static_cast<uint32_t>(n);
  if (blocks == 1) {
    atas_step_fused_kernel<G, D, B, false><<<static_cast<unsigned>(s.batch), kThreads, 0, stream>>>(
        delta_buf, op.v_buf, op.index, op.offsets, op.flips, grad, x_adv, x, out, s, prm, n32, chunk);
    *done = true;
    return cudaGetLastError();
  }
  auto kernel = atas_step_fused_kernel<G, D, B, true>;
  if (!cluster_fits(reinterpret_cast<const void*>(kernel), blocks, kThreads, 0)) return cudaSuccess;
  const ClusterLaunch launch(static_cast<unsigned>(s.batch * blocks), blocks, kThreads, 0, stream);
  if (cudaLaunchKernelEx(&launch.config, kernel, delta_buf, op.v_buf, op.index, op.offsets, op.flips, grad, x_adv, x,
                         out, s, prm, n32, chunk) != cudaSuccess) {
    (void)cudaGetLastError();  // refused after all (resources taken at run time): clear it, the caller splits
    return cudaSuccess;
  }
  *done = true;
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_atas_step_fused(const AtasStepOperands& op, AtasShape s, AtasStepParams params, bool* done,
                                   cudaStream_t stream) {
  *done = false;
  if (s.batch <= 0) {
    *done = true;
    return cudaSuccess;
  }
  if (!shape_ok(s)) return cudaErrorInvalidValue;
  const int64_t n = s.channels * s.height * s.width;
  // Rows of no elements (v is still updated) have no work units for the split path: one block per row here.
  if (n > 0 && (requested_path() == AtasPath::kSplit || n >= kMaxFusedRow)) return cudaSuccess;
  const int blocks = n == 0 ? 1 : fused_blocks_per_row(s.batch, n, cluster_launch_supported());
  if (blocks == 0 || s.batch * blocks > kMaxGridX) return cudaSuccess;
  FASTAT_CUDA_DISPATCH(op.grad_dtype, G, FASTAT_CUDA_DISPATCH(op.dtype, D, FASTAT_CUDA_DISPATCH(op.buf_dtype, B, {
    return launch_fused<G, D, B>(op, s, params, n, blocks, done, stream);
  })))
  return cudaErrorInvalidValue;
}

int64_t atas_step_split_workspace_bytes(int64_t batch, int64_t row_numel, bool warmup) {
  if (warmup || batch <= 0 || row_numel <= 0) return 0;
  const int64_t bytes = batch * norm_chunks(row_numel) * static_cast<int64_t>(sizeof(double)) +
                        batch * static_cast<int64_t>(sizeof(float));
  return (bytes + 15) / 16 * 16;
}

cudaError_t launch_atas_step_split(const AtasStepOperands& op, AtasShape s, AtasStepParams params, void* workspace,
                                   cudaStream_t stream) {
  if (s.batch <= 0) return cudaSuccess;
  if (!shape_ok(s)) return cudaErrorInvalidValue;
  const int64_t n = s.channels * s.height * s.width;
  if (n == 0) return cudaErrorInvalidValue;  // launch_atas_step_fused always takes rows of no elements
  const int64_t chunks = norm_chunks(n);
  const int64_t tiles = (s.height * s.width + kPlaneTile - 1) / kPlaneTile;
  if (s.batch * s.channels * tiles > kMaxGridX || s.batch * chunks > kMaxGridX) return cudaErrorInvalidValue;
  double* partial = nullptr;
  float* v_old = nullptr;
  if (!params.warmup) {
    if (workspace == nullptr) return cudaErrorInvalidValue;
    partial = static_cast<double*>(workspace);
    v_old = reinterpret_cast<float*>(partial + s.batch * chunks);
  }
  FASTAT_CUDA_DISPATCH(op.grad_dtype, G, {
    const auto* grad = static_cast<const G*>(op.grad);
    if (!params.warmup) {
      atas_norm_kernel<G><<<static_cast<unsigned>(s.batch * chunks), kNormThreads, 0, stream>>>(
          grad, op.v_buf, op.index, s.num_examples, n, chunks, partial, v_old);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    FASTAT_CUDA_DISPATCH(op.dtype, D, FASTAT_CUDA_DISPATCH(op.buf_dtype, B, {
      atas_update_kernel<G, D, B><<<static_cast<unsigned>(s.batch * s.channels * tiles), kThreads, 0, stream>>>(
          static_cast<B*>(op.delta_buf), op.v_buf, op.index, op.offsets, op.flips, grad,
          static_cast<const D*>(op.x_adv), static_cast<const D*>(op.x), static_cast<D*>(op.out), s, params, partial,
          v_old, chunks, tiles);
      return cudaGetLastError();
    }))
  })
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fastat
