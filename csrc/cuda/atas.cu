// ATAS: the start-point gather and the adaptive step with its write-back into the per-example buffer.
//
// Window mapping (both ops): output element (b, c, i, j) <-> delta_buf[idx_b, c, r_b + i, c_b + j'], j' = W-1-j if
// flips[b] else j. idx_b = index[b] clamped into [0, N-1], r_b = offsets[b, 0] clamped into [0, Hp-H], c_b =
// offsets[b, 1] clamped into [0, Wp-W]: whatever the values, no access leaves delta_buf (validated inputs are in range
// and unchanged by the clamp).
//
// atas_step = two launches on the stream: (1) per (row, 16384-element chunk) an fp64 partial of Σg², and the old
// v_buf[idx_b] copied to scratch; (2) per (plane, tile) the update: every block sums its row's partials in a fixed
// order (so all blocks agree and repeated calls are bit-identical), forms v and the step, and the first block of the
// row stores v into v_buf (kernel 2 never reads v_buf, so there is no read/write race). Warmup skips launch (1).
#include "kernel_utils.cuh"

namespace fastat {
namespace cuda {
namespace {

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
    const float sq_norm = static_cast<float>(sum);
    const float v = __fadd_rn(__fmul_rn(prm.beta, v_old[b]), __fmul_rn(prm.one_minus_beta, sq_norm));
    if (c == 0 && tile == 0 && threadIdx.x == 0) v_buf[w.example] = v;
    const float denom = __fadd_rn(1.f, __fdiv_rn(__fsqrt_rn(v), prm.c));
    step = clamp_nan(__fdiv_rn(prm.gamma_over_c, denom), prm.step_min, prm.step_max);
  }
  const int width = static_cast<int>(s.width), plane_numel = static_cast<int>(s.height * s.width);
  const int begin = static_cast<int>(tile * kPlaneTile);
  const int end = plane_numel - begin < kPlaneTile ? plane_numel : begin + static_cast<int>(kPlaneTile);
  for (int e = begin + threadIdx.x; e < end; e += kThreads) {
    const int i = e / width, j = e - i * width;
    const int64_t xi = plane * plane_numel + e;
    const float xv = to_float(x[xi]);
    float xa = __fadd_rn(to_float(x_adv[xi]), __fmul_rn(step, sign_of(to_float(grad[xi]))));
    xa = clamp_nan(min_nan(max_nan(xa, __fsub_rn(xv, prm.eps)), __fadd_rn(xv, prm.eps)), 0.f, 1.f);
    out[xi] = from_float<D>(xa);
    delta_buf[w.base + i * s.buf_width + (w.flip ? width - 1 - j : j)] = from_float<B>(__fsub_rn(xa, xv));
  }
}

int64_t norm_chunks(int64_t n) { return (n + kNormChunk - 1) / kNormChunk; }

bool shape_ok(const AtasShape& s) {
  return s.channels > 0 && s.height > 0 && s.width > 0 && s.num_examples > 0 && s.buf_height >= s.height &&
         s.buf_width >= s.width && s.height * s.width <= 2147483647;
}

}  // namespace

int64_t atas_step_workspace_bytes(int64_t batch, int64_t row_numel, bool warmup) {
  if (warmup || batch <= 0 || row_numel <= 0) return 0;
  const int64_t bytes = batch * norm_chunks(row_numel) * static_cast<int64_t>(sizeof(double)) +
                        batch * static_cast<int64_t>(sizeof(float));
  return (bytes + 15) / 16 * 16;
}

cudaError_t launch_atas_gather(const void* delta_buf, DType buf_dtype, const int64_t* index, const int64_t* offsets,
                               const bool* flips, const void* x, void* out, DType dtype, AtasShape s,
                               cudaStream_t stream) {
  if (s.batch <= 0) return cudaSuccess;
  if (!shape_ok(s)) return cudaErrorInvalidValue;
  const int64_t tiles = (s.height * s.width + kPlaneTile - 1) / kPlaneTile;
  if (s.batch * s.channels * tiles > kMaxGridX) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(s.batch * s.channels * tiles));
  FASTAT_CUDA_DISPATCH(dtype, D, FASTAT_CUDA_DISPATCH(buf_dtype, B, {
    atas_gather_kernel<B, D><<<grid, kThreads, 0, stream>>>(static_cast<const B*>(delta_buf), index, offsets, flips,
                                                            static_cast<const D*>(x), static_cast<D*>(out), s, tiles);
    return cudaGetLastError();
  }))
  return cudaErrorInvalidValue;
}

cudaError_t launch_atas_step(void* delta_buf, DType buf_dtype, float* v_buf, const int64_t* index,
                             const int64_t* offsets, const bool* flips, const void* grad, DType grad_dtype,
                             const void* x_adv, const void* x, void* out, DType dtype, AtasShape s,
                             AtasStepParams params, void* workspace, cudaStream_t stream) {
  if (s.batch <= 0) return cudaSuccess;
  if (!shape_ok(s)) return cudaErrorInvalidValue;
  const int64_t n = s.channels * s.height * s.width;
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
  FASTAT_CUDA_DISPATCH(grad_dtype, G, {
    if (!params.warmup) {
      atas_norm_kernel<G><<<static_cast<unsigned>(s.batch * chunks), kNormThreads, 0, stream>>>(
          static_cast<const G*>(grad), v_buf, index, s.num_examples, n, chunks, partial, v_old);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    FASTAT_CUDA_DISPATCH(dtype, D, FASTAT_CUDA_DISPATCH(buf_dtype, B, {
      atas_update_kernel<G, D, B><<<static_cast<unsigned>(s.batch * s.channels * tiles), kThreads, 0, stream>>>(
          static_cast<B*>(delta_buf), v_buf, index, offsets, flips, static_cast<const G*>(grad),
          static_cast<const D*>(x_adv), static_cast<const D*>(x), static_cast<D*>(out), s, params, partial, v_old,
          chunks, tiles);
      return cudaGetLastError();
    }))
  })
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fastat
