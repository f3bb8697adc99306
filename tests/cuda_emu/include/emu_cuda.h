// A CPU emulation of the subset of CUDA that fastat's kernels (csrc/cuda/*.cu) use, so that the kernels themselves,
// not a re-implementation of them, can be run and checked on a machine without a GPU. Test infrastructure only:
// tests/cuda_emu/emulator.py compiles the unmodified kernel sources with g++ against these headers (after a mechanical
// rewrite of the three things C++ cannot parse: `k<<<grid, block, smem, stream>>>(args)` launches, `extern __shared__`
// arrays and inline PTX), and tests/gpu, run with FASTAT_CUDA_TESTS_ON_CPU=emu, compares them with
// fastat.ops.reference.
//
// Model. Every CUDA thread is a fiber (its own stack, cooperative switches), so the threads of a block interleave only
// at __syncthreads() and warp collectives, exactly where CUDA makes their effects visible to each other. A block runs
// on one OS thread; the blocks of a thread-block cluster run on concurrent OS threads (cluster.sync() is a barrier
// across them), other blocks one after another. `__shared__` variables are `static thread_local`: one copy per block;
// distributed shared memory (cluster.map_shared_rank) translates an address into another block's copy.
//
// What the emulator checks beyond the results: warp collectives whose lanes disagree on the mask or on the call site,
// lanes that read from a lane outside the mask, __syncthreads()/cluster.sync() reached from different call sites
// (divergent barriers), deadlocks (threads waiting for lanes or blocks that exited), overruns of dynamic shared
// memory, __trap(), reads of the shared memory of a cluster block that has exited, and the launch configuration
// (block size, grid, dynamic shared memory against the opted-in limit, cluster dimensions). It does not model memory
// ordering beyond that, timing, or occupancy: those stay for compute-sanitizer on a GPU.
//
// A kernel that dereferences a wild or misaligned pointer crashes the process (it would fault on a GPU too); a signal
// handler first prints the kernel's block and thread to stderr (under pytest, add -s to see it past the capture).
//
// Limits: blocks that are not in one cluster run one after another, so races between blocks (two blocks writing the
// same global address) go unseen; a thread that spins on a flag another thread sets never yields and hangs the
// process (no kernel here spins); a fiber that overflows its 128 KB stack hits a guard page (SIGSEGV, not a report);
// 2-D/3-D blocks and warp shuffles with width < 32 are refused rather than emulated.
#pragma once

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <source_location>
#include <tuple>
#include <type_traits>
#include <utility>

// ------------------------------------------------------------------------------------------------- qualifiers
#define __host__
#define __device__
#define __global__
#define __noinline__ __attribute__((noinline))
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local  // build.py rewrites plain declarations to also call emu::shared_decl
#define CUDARTAPI

// ---------------------------------------------------------------------------------------------------- vector types
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

// ------------------------------------------------------------------------------------------------ runtime types
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoDevice = 100,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchTimeout = 702,
  cudaErrorIllegalAddress = 700,
  cudaErrorAssert = 710,
  cudaErrorLaunchFailure = 719,
  cudaErrorClusterOutOfResources = 912,
};
using cudaError = cudaError_t;
struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaDeviceAttr : int {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
  cudaDevAttrClusterLaunch = 120,
};

enum cudaFuncAttribute : int {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
  cudaFuncAttributeNonPortableClusterSizeAllowed = 12,
};

struct cudaFuncAttributes {
  size_t sharedSizeBytes;
  size_t constSizeBytes;
  size_t localSizeBytes;
  int maxThreadsPerBlock;
  int numRegs;
  int ptxVersion;
  int binaryVersion;
  int cacheModeCA;
  int maxDynamicSharedSizeBytes;
  int preferredShmemCarveout;
};

enum cudaLaunchAttributeID : int {
  cudaLaunchAttributeIgnore = 0,
  cudaLaunchAttributeClusterDimension = 4,
};
union cudaLaunchAttributeValue {
  struct {
    unsigned x, y, z;
  } clusterDim;
  char pad[64];
};
struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  cudaLaunchAttributeValue val;
};
struct cudaLaunchConfig_t {
  dim3 gridDim;
  dim3 blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
  cudaLaunchAttribute* attrs;
  unsigned numAttrs;
};

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, const void* func);
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);
cudaError_t cudaOccupancyMaxActiveClusters(int* clusters, const void* func, const cudaLaunchConfig_t* config);

// ----------------------------------------------------------------------------------------------- builtin variables
// Set by the scheduler before it resumes a fiber (threadIdx) or starts a block (the others).
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
constexpr int warpSize = 32;

namespace emu {

// ---------------------------------------------------------------------------------------- scheduler entry points
// `at` is the source position of the call in the kernel code: the threads that meet at a barrier or in a collective
// must have reached it from the same place (divergence checks), and errors name it.
using Where = std::source_location;
void syncthreads(const Where& at);
void cluster_sync(const Where& at);
// A warp collective over the lanes of `mask`: every lane contributes `value` and receives all 32 contributions.
void warp_exchange(unsigned mask, uint64_t value, uint64_t* all, const char* what, const Where& at);
[[noreturn]] void trap(const char* why);
void* map_shared(const void* p, unsigned rank, size_t bytes);
// Called where a kernel declares a __shared__ variable (inserted by the rewrite): the first thread of a block to get
// there fills it with 0xFF bytes (uninitialised shared memory holds garbage: NaN as floats), and the emulator learns
// the kernel's static shared-memory size and which addresses are shared memory (map_shared_rank checks them).
void shared_decl(void* p, size_t bytes);
void* dynamic_smem_base();
unsigned cluster_rank();
unsigned cluster_blocks();
unsigned lane_id();

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp collective operand");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// A kernel argument converted to its parameter type the way a call converts it (implicitly: no void* -> T*).
template <typename To, typename From>
To as_param(From&& v) {
  return std::forward<From>(v);
}

template <typename T>
T* dynamic_smem() {
  return static_cast<T*>(dynamic_smem_base());
}

// ------------------------------------------------------------------------------------------------------ launches
struct Config {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  Config(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr) : grid(g), block(b), smem(s), stream(st) {}
};

// Runs body() as every thread of every block of the grid; cluster = blocks per cluster (1: none). Returns the launch
// error (configuration refused: nothing runs) and records a failure of the kernel as the sticky error.
cudaError_t run_grid(const void* fn, const Config& cfg, unsigned cluster, const std::function<void()>& body);

// A launch of `kernel` in clusters of `cluster` blocks (1: none) with `args`.
template <typename... P, typename... A>
cudaError_t launch_grid(void (*kernel)(P...), const Config& cfg, unsigned cluster, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  // Arguments are converted to the parameter types once, at the launch, as CUDA copies them into the parameter space.
  std::tuple<typename std::decay<P>::type...> params(as_param<typename std::decay<P>::type>(args)...);
  return run_grid(reinterpret_cast<const void*>(kernel), cfg, cluster, [&] {
    auto copy = params;  // each thread gets its own copy of the parameters
    std::apply(kernel, copy);
  });
}

// What `kernel<<<grid, block, smem, stream>>>(args)` becomes (see emulator.py's rewrite).
template <typename... P, typename... A>
cudaError_t launch(void (*kernel)(P...), const Config& cfg, A&&... args) {
  return launch_grid(kernel, cfg, 1, std::forward<A>(args)...);
}

// The cluster dimensions a launch configuration asks for (its last such attribute), or nullptr.
inline const cudaLaunchAttributeValue* cluster_dims(const cudaLaunchConfig_t* config) {
  const cudaLaunchAttributeValue* dims = nullptr;
  for (unsigned i = 0; i < config->numAttrs; ++i)
    if (config->attrs[i].id == cudaLaunchAttributeClusterDimension) dims = &config->attrs[i].val;
  return dims;
}

}  // namespace emu

template <typename... P, typename... A>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(P...), A&&... args) {
  const cudaLaunchAttributeValue* dims = emu::cluster_dims(config);
  if (dims != nullptr && (dims->clusterDim.y != 1 || dims->clusterDim.z != 1)) return cudaErrorInvalidValue;
  const emu::Config cfg(config->gridDim, config->blockDim, config->dynamicSmemBytes, config->stream);
  return emu::launch_grid(kernel, cfg, dims != nullptr ? dims->clusterDim.x : 1u, std::forward<A>(args)...);
}

// ---------------------------------------------------------------------------------------------- device intrinsics
inline void __syncthreads(const emu::Where& at = emu::Where::current()) { emu::syncthreads(at); }
[[noreturn]] inline void __trap() { emu::trap("__trap()"); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                         const emu::Where& at = emu::Where::current()) {
  if (width != 32) emu::trap("__shfl_xor_sync: width other than 32 is not emulated");
  uint64_t all[32];
  emu::warp_exchange(mask, emu::to_bits(v), all, "__shfl_xor_sync", at);
  const unsigned src = emu::lane_id() ^ static_cast<unsigned>(lane_mask);
  if (src >= 32) return v;  // out of range: the caller's own value
  if (!(mask >> src & 1u)) emu::trap("__shfl_xor_sync reads a lane outside the mask");
  return emu::from_bits<T>(all[src]);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                        const emu::Where& at = emu::Where::current()) {
  if (width != 32) emu::trap("__shfl_up_sync: width other than 32 is not emulated");
  uint64_t all[32];
  emu::warp_exchange(mask, emu::to_bits(v), all, "__shfl_up_sync", at);
  const unsigned lane = emu::lane_id();
  if (lane < delta) return v;
  if (!(mask >> (lane - delta) & 1u)) emu::trap("__shfl_up_sync reads a lane outside the mask");
  return emu::from_bits<T>(all[lane - delta]);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32, const emu::Where& at = emu::Where::current()) {
  if (width != 32) emu::trap("__shfl_sync: width other than 32 is not emulated");
  uint64_t all[32];
  emu::warp_exchange(mask, emu::to_bits(v), all, "__shfl_sync", at);
  const unsigned src = static_cast<unsigned>(src_lane) & 31u;
  if (!(mask >> src & 1u)) emu::trap("__shfl_sync reads a lane outside the mask");
  return emu::from_bits<T>(all[src]);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const emu::Where& at = emu::Where::current()) {
  uint64_t all[32];
  emu::warp_exchange(mask, pred != 0, all, "__ballot_sync", at);
  unsigned r = 0;
  for (unsigned l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && all[l] != 0) r |= 1u << l;
  return r;
}
template <typename T>
inline unsigned __match_any_sync(unsigned mask, T v, const emu::Where& at = emu::Where::current()) {
  uint64_t all[32];
  const uint64_t mine = emu::to_bits(v);
  emu::warp_exchange(mask, mine, all, "__match_any_sync", at);
  unsigned r = 0;
  for (unsigned l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && all[l] == mine) r |= 1u << l;
  return r;
}

// Atomics: real ones, since blocks of a cluster run on concurrent OS threads.
template <typename T, typename = typename std::enable_if<std::is_integral<T>::value>::type>
inline T atomicAdd(T* p, typename std::type_identity<T>::type v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
namespace emu {
// Floating-point atomic add as a compare-and-swap loop on the bit pattern (Bits: the same-sized unsigned type).
template <typename F, typename Bits>
inline F atomic_add_float(F* p, F v) {
  static_assert(sizeof(F) == sizeof(Bits), "bit pattern type");
  auto* u = reinterpret_cast<Bits*>(p);
  Bits old = __atomic_load_n(u, __ATOMIC_RELAXED);
  for (;;) {
    const F was = std::bit_cast<F>(old);
    const Bits next = std::bit_cast<Bits>(was + v);
    if (__atomic_compare_exchange_n(u, &old, next, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return was;
  }
}
}  // namespace emu
inline float atomicAdd(float* p, float v) { return emu::atomic_add_float<float, uint32_t>(p, v); }
inline double atomicAdd(double* p, double v) { return emu::atomic_add_float<double, uint64_t>(p, v); }
template <typename T>
inline T atomicMax(T* p, typename std::type_identity<T>::type v) {
  T old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
template <typename T>
inline T atomicMin(T* p, typename std::type_identity<T>::type v) {
  T old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (v < old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline int __float_as_int(float f) { return static_cast<int>(__float_as_uint(f)); }
inline float __int_as_float(int i) { return __uint_as_float(static_cast<unsigned>(i)); }
// IEEE round-to-nearest single operations (the build uses -ffp-contract=off, SSE arithmetic).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }

// CUDA's min/max overloads for device code: fminf/fmaxf for floating point (a NaN operand gives the other one), the
// usual arithmetic conversions otherwise.
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
template <typename A, typename B>
inline typename std::common_type<A, B>::type min(A a, B b) {
  using C = typename std::common_type<A, B>::type;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <typename A, typename B>
inline typename std::common_type<A, B>::type max(A a, B b) {
  using C = typename std::common_type<A, B>::type;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}

#define EMU_ASM(...) ((void)0)
