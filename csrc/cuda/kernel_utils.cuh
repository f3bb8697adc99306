// Device helpers shared by the fastat CUDA kernels: dtype conversion, torch's NaN semantics, block reductions, the
// dtype switch for launchers and launch-size helpers. Torch-free (CUDA runtime headers only).
//
// Rounding rules (helper_context "Numerics"): every op's math is fp32; a product that feeds a sum is written with
// __fmul_rn/__fadd_rn so nvcc cannot contract it into an FMA, sqrt/div are IEEE (no fast-math).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>

#include "launchers.h"

namespace fastat {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// ------------------------------------------------------------------------------------------------ dtype conversion
template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }

// Round to nearest even, like torch's .to(dtype).
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// Four consecutive elements, aligned to their size, so one 8- or 16-byte load/store moves them.
template <typename T>
struct alignas(4 * sizeof(T)) Pack4 {
  T v[4];
};

template <typename T>
inline bool aligned_for_pack4(const void* p) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % (4 * sizeof(T)) == 0;
}

// ----------------------------------------------------------------------------------------------- torch's semantics
// torch.sign as ATen computes it on CPU and CUDA, (0 < g) - (g < 0): sign(±0) = 0 and sign(NaN) = 0.
__device__ __forceinline__ float sign_of(float g) { return g > 0.f ? 1.f : (g < 0.f ? -1.f : 0.f); }

// alpha·sign(g) without a multiply (exact: ±alpha or 0).
__device__ __forceinline__ float signed_step(float g, float alpha) {
  return g > 0.f ? alpha : (g < 0.f ? -alpha : 0.f);
}

// torch.maximum / torch.minimum: NaN in either operand gives NaN.
__device__ __forceinline__ float max_nan(float a, float b) { return a != a ? a : (b != b ? b : fmaxf(a, b)); }
__device__ __forceinline__ float min_nan(float a, float b) { return a != a ? a : (b != b ? b : fminf(a, b)); }

// torch.clamp(v, lo, hi) with finite bounds: max first, then min; NaN propagates.
__device__ __forceinline__ float clamp_nan(float v, float lo, float hi) { return v != v ? v : fminf(fmaxf(v, lo), hi); }

// box(d, x) = min(max(d, -x), 1 - x): keeps x + d in [0, 1].
__device__ __forceinline__ float box(float d, float x) { return min_nan(max_nan(d, -x), __fsub_rn(1.f, x)); }

// -------------------------------------------------------------------------------------------------- block helpers
// Exclusive prefix sum over the block (kThreads a multiple of 32, all threads call). `scratch` holds 32 entries.
template <int kThreads>
__device__ __forceinline__ unsigned block_exclusive_sum(unsigned value, unsigned* scratch) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block size");
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned incl = value;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned y = __shfl_up_sync(kFullMask, incl, o);
    if (lane >= o) incl += y;
  }
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const unsigned total = lane < kWarps ? scratch[lane] : 0u;
    unsigned run = total;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const unsigned y = __shfl_up_sync(kFullMask, run, o);
      if (lane >= o) run += y;
    }
    if (lane < kWarps) scratch[lane] = run - total;  // exclusive prefix of the warp totals
  }
  __syncthreads();
  const unsigned result = scratch[warp] + incl - value;
  __syncthreads();  // scratch may be reused right after
  return result;
}

// Minimum over the block, returned to every thread.
template <int kThreads>
__device__ __forceinline__ unsigned block_min(unsigned value, unsigned* scratch) {
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) value = min(value, __shfl_xor_sync(kFullMask, value, o));
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  unsigned result = scratch[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) result = min(result, scratch[w]);
  __syncthreads();
  return result;
}

// Sum over the block in fp64, in a fixed order (so a given launch is deterministic), returned to every thread.
template <int kThreads>
__device__ __forceinline__ double block_sum(double value, double* scratch) {
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) value += __shfl_xor_sync(kFullMask, value, o);
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  double result = 0.0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) result += scratch[w];
  __syncthreads();
  return result;
}

// ------------------------------------------------------------------------------------------------- host helpers
// Attribute kAttr of the current device, asked once per device (lock-free: read on every launch); `fallback` where
// the runtime cannot answer, leaving no pending error behind.
template <cudaDeviceAttr kAttr>
inline int cached_device_attribute(int fallback) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};  // value + 1; 0: not asked yet
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return fallback;
  }
  const bool cacheable = dev >= 0 && dev < kMaxDevices;
  if (cacheable) {
    const int cached = cache[dev].load(std::memory_order_relaxed);
    if (cached != 0) return cached - 1;
  }
  int value = 0;
  if (cudaDeviceGetAttribute(&value, kAttr, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    value = fallback;
  }
  if (cacheable) cache[dev].store(value + 1, std::memory_order_relaxed);
  return value;
}

// Multiprocessor count of the current device (at least 1).
inline int current_sm_count() {
  const int count = cached_device_attribute<cudaDevAttrMultiProcessorCount>(1);
  return count > 0 ? count : 1;
}

// Whether the current device can launch thread-block clusters (sm_90+).
inline bool cluster_launch_supported() { return cached_device_attribute<cudaDevAttrClusterLaunch>(0) != 0; }

// Memo of host-side runtime answers that never change for a (current device, fn, a, b), such as a kernel's
// shared-memory opt-in or its cluster occupancy: the first launch asks the runtime, later launches (and launches under
// CUDA-graph capture) only take an uncontended lock. Each call site owns one (a function-local static). A few dozen
// entries are kept (one per kernel instantiation and size class a process uses); beyond them answers are recomputed
// on every call, still correct.
class HostMemo {
 public:
  template <typename Compute>
  int get(const void* fn, int64_t a, int64_t b, Compute&& compute) {
    int device = -1;
    if (cudaGetDevice(&device) != cudaSuccess) return compute();
    std::lock_guard<std::mutex> lock(mutex_);
    for (int i = 0; i < size_; ++i) {
      const Entry& e = entries_[i];
      if (e.fn == fn && e.a == a && e.b == b && e.device == device) return e.value;
    }
    const int value = compute();
    if (size_ < kCapacity) entries_[size_++] = Entry{fn, a, b, device, value};
    return value;
  }

 private:
  struct Entry {
    const void* fn;
    int64_t a, b;
    int device, value;
  };
  static constexpr int kCapacity = 64;
  std::mutex mutex_;
  Entry entries_[kCapacity] = {};
  int size_ = 0;
};

// Opts `kernel` in to as much dynamic shared memory as it may need, up to `want_bytes` (the most its launch site ever
// asks for) or what the current device allows next to the kernel's static shared memory, whichever is less, and
// returns the resulting limit: launches with at most that many bytes can run. Done once per (kernel, device,
// want_bytes), so later launches (and launches under CUDA-graph capture) make no runtime call; the limit is only ever
// raised, so a launch can never undo what a concurrent one relies on. 0 if the runtime cannot be asked.
inline int64_t dynamic_smem_limit(const void* kernel, int64_t want_bytes) {
  static HostMemo memo;
  return memo.get(kernel, want_bytes, 0, [&]() -> int {
    int dev = 0, optin = 0;
    cudaFuncAttributes attr;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess ||
        cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) {
      (void)cudaGetLastError();  // answered by the return value; leave no pending error behind
      return 0;
    }
    const int have = attr.maxDynamicSharedSizeBytes;
    const int64_t room = optin - static_cast<int64_t>(attr.sharedSizeBytes);
    const int limit = static_cast<int>(std::min<int64_t>(want_bytes, room));
    if (limit <= have) return have;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limit) != cudaSuccess) {
      (void)cudaGetLastError();
      return have;
    }
    return limit;
  });
}

// Blocks for a grid-stride loop over `work` items of `per_block` each: enough to fill the GPU, no more.
inline unsigned grid_stride_blocks(int64_t work, int64_t per_block) {
  const int64_t needed = (work + per_block - 1) / per_block;
  const int64_t cap = static_cast<int64_t>(current_sm_count()) * 16;
  return static_cast<unsigned>(needed < cap ? (needed > 0 ? needed : 1) : cap);
}

constexpr int64_t kMaxGridX = 2147483647;  // gridDim.x limit

}  // namespace cuda
}  // namespace fastat

// Binds `T` to the C++ type of a DType and runs the body; unknown dtypes return cudaErrorInvalidValue.
#define FASTAT_CUDA_DISPATCH(dtype, T, ...)                            \
  switch (dtype) {                                                     \
    case ::fastat::cuda::DType::kFloat32: {                            \
      using T = float;                                                 \
      __VA_ARGS__                                                      \
    } break;                                                           \
    case ::fastat::cuda::DType::kBFloat16: {                           \
      using T = __nv_bfloat16;                                         \
      __VA_ARGS__                                                      \
    } break;                                                           \
    case ::fastat::cuda::DType::kFloat16: {                            \
      using T = __half;                                                \
      __VA_ARGS__                                                      \
    } break;                                                           \
    default:                                                           \
      return cudaErrorInvalidValue;                                    \
  }
