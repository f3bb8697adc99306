// FGSM-PGI step (python/fastat/ops/reference.py: pgi_step): one thread per element of the batch's B crop windows.
//
// Element e of the (B, C, H, W) batch, NCHW order, maps to delta_buf/mom_buf[idx_b, c, r_b + i, c_b + j'] with
// j' = W-1-j if flips[b] else j, idx_b = index[b] clamped into [0, N-1] and (r_b, c_b) = offsets[b] clamped into the
// buffer, as in atas.cu: whatever the values, no access leaves the buffers (validated inputs are unchanged by it).
// Per element, each operation rounded on its own in the reference's order (no FMA):
//   d0 = x_adv − x;  m = g / l1 + decay·mom;  next = box(clamp(d0 + ε·sign(m), −ε, ε), x);
//   out = clamp(min(max((x + d0) + ε·sign(g), x − ε), x + ε), 0, 1);  mom ← m, delta ← next.
// l1 (the batch's ‖g‖₁) is read from device memory by every thread, so the op never waits on the host.
#include "kernel_utils.cuh"

namespace fastat {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t clamp_to(int64_t v, int64_t hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

template <typename G, typename D, typename B>
__global__ void __launch_bounds__(kThreads)
    pgi_step_kernel(B* __restrict__ delta_buf,     // (N, C, Hp, Wp), windows written
                    B* __restrict__ mom_buf,       // (N, C, Hp, Wp), windows read and written
                    const int64_t* __restrict__ index, const int64_t* __restrict__ offsets,
                    const bool* __restrict__ flips,
                    const G* __restrict__ grad,     // (B, C, H, W)
                    const float* __restrict__ grad_l1,  // 0-dim
                    const D* __restrict__ x_adv,    // (B, C, H, W)
                    const D* __restrict__ x,        // (B, C, H, W)
                    D* __restrict__ out,            // (B, C, H, W)
                    AtasShape s, float eps, float decay, int64_t total) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= total) return;
  const int64_t j = e % s.width, rows = e / s.width;
  const int64_t i = rows % s.height, plane = rows / s.height;
  const int64_t c = plane % s.channels, b = plane / s.channels;
  const int64_t example = clamp_to(index[b], s.num_examples - 1);
  const int64_t r0 = clamp_to(offsets[2 * b], s.buf_height - s.height);
  const int64_t c0 = clamp_to(offsets[2 * b + 1], s.buf_width - s.width);
  const int64_t k = ((example * s.channels + c) * s.buf_height + r0 + i) * s.buf_width + c0 +
                    (flips[b] ? s.width - 1 - j : j);

  const float xv = to_float(x[e]);
  const float gv = to_float(grad[e]);
  const float d0 = __fsub_rn(to_float(x_adv[e]), xv);
  const float m = __fadd_rn(__fdiv_rn(gv, *grad_l1), __fmul_rn(decay, to_float(mom_buf[k])));
  const float next = box(clamp_nan(__fadd_rn(d0, signed_step(m, eps)), -eps, eps), xv);
  const float moved = __fadd_rn(__fadd_rn(xv, d0), signed_step(gv, eps));
  const float xa = clamp_nan(min_nan(max_nan(moved, __fsub_rn(xv, eps)), __fadd_rn(xv, eps)), 0.f, 1.f);
  mom_buf[k] = from_float<B>(m);
  delta_buf[k] = from_float<B>(next);
  out[e] = from_float<D>(xa);
}

}  // namespace

cudaError_t launch_pgi_step(const PgiStepOperands& op, AtasShape s, float eps, float decay, cudaStream_t stream) {
  if (s.batch <= 0) return cudaSuccess;
  if (s.channels < 0 || s.height < 0 || s.width < 0 || s.num_examples <= 0 || s.buf_height < s.height ||
      s.buf_width < s.width)
    return cudaErrorInvalidValue;
  const int64_t total = s.batch * s.channels * s.height * s.width;
  if (total == 0) return cudaSuccess;  // images of no elements: nothing to write (and no 0-block grid)
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > kMaxGridX) return cudaErrorInvalidValue;
  FASTAT_CUDA_DISPATCH(op.grad_dtype, G, FASTAT_CUDA_DISPATCH(op.dtype, D, FASTAT_CUDA_DISPATCH(op.buf_dtype, B, {
    pgi_step_kernel<G, D, B><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        static_cast<B*>(op.delta_buf), static_cast<B*>(op.mom_buf), op.index, op.offsets, op.flips,
        static_cast<const G*>(op.grad), op.grad_l1, static_cast<const D*>(op.x_adv), static_cast<const D*>(op.x),
        static_cast<D*>(op.out), s, eps, decay, total);
    return cudaGetLastError();
  })))
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fastat
