// Exact per-row quantile of |g| for the ZeroGrad kernels: tau = torch.quantile(|g_row|, q), bit for bit.
//
// torch.quantile sorts the row and interpolates between the lo-th and hi-th smallest values (lo = floor(rank),
// hi = ceil(rank), rank = q·(n-1) by the running torch's rule: ../quantile_rank.h). Here both order
// statistics are found by a radix selection on the fp32 bit patterns of |g| (monotone for non-negative floats; NaN
// patterns sort above +inf, as torch sorts NaN last): 3 passes over 11 + 10 + 10 bits, each building a shared-memory
// histogram of the keys that match the prefix found so far and scanning it for the digit holding the k-th key. The hi-th is the same value unless the lo-th's ties are used
// up, then the smallest key above it (one min-reduction). tau = torch's lerp of the two (with the FMA nvcc emits
// for it, which matches torch.quantile on CPU and CUDA). Any NaN in the row gives tau = NaN, as in torch.
//
// The selection runs on one block, or on a thread-block cluster (sm_90+) whose blocks each hold a slice of the row and
// sum their histograms through distributed shared memory; `Src` gives the block's keys (shared memory or global).
#pragma once

#include <cooperative_groups.h>

#include <algorithm>
#include <cmath>

#include "kernel_utils.cuh"

namespace fastat {
namespace cuda {
namespace row_quantile {

namespace cg = cooperative_groups;

constexpr int kBins = 2048;        // histogram bins per pass (11 bits in pass 0, 10 in passes 1 and 2)
constexpr int kNanSlot = kBins;    // extra histogram slot: number of NaNs (pass 0)
constexpr int kPasses = 3;
constexpr uint32_t kAbsMask = 0x7fffffffu;
constexpr uint32_t kInfBits = 0x7f800000u;
constexpr uint32_t kNoKey = 0xffffffffu;  // above every |g| bit pattern: marks "no element"

// Pass p histograms bits [shift, high) of the key among keys whose bits [high, 32) equal the prefix found so far.
__device__ __forceinline__ int pass_shift(int p) { return p == 0 ? 20 : (p == 1 ? 10 : 0); }
__device__ __forceinline__ int pass_high(int p) { return p == 0 ? 31 : (p == 1 ? 20 : 10); }
__device__ __forceinline__ uint32_t pass_mask(int p) { return p == 0 ? 0x7ffu : 0x3ffu; }

// torch.quantile's ranks for a row of n (../quantile_rank.h): lo = floor(rank), hi = ceil(rank), w = rank - lo.
struct QuantileArgs {
  uint32_t lo, hi;
  float w;
};

template <bool kCluster>
struct SelectShared {
  unsigned hist[kBins + 1];                 // this block's counts (+ NaN slot)
  unsigned total[kCluster ? kBins + 1 : 1];  // counts summed over the cluster
  unsigned scratch[32];
  unsigned digit, k, count, min_key;
};

// Raw fp32 bits of g: from this block's shared-memory copy, or loaded from global memory.
struct SmemRow {
  const uint32_t* bits;
  __device__ __forceinline__ uint32_t raw(int64_t i) const { return bits[i]; }
};
template <typename G>
struct GlobalRow {
  const G* g;
  __device__ __forceinline__ uint32_t raw(int64_t i) const { return __float_as_uint(to_float(g[i])); }
};

// hist[bin] += 1 for each lane with `active`; lanes hitting the same bin are combined into one atomic.
// Must be called by all 32 lanes of the warp.
__device__ __forceinline__ void warp_hist_add(unsigned* hist, unsigned bin, bool active) {
  const unsigned active_lanes = __ballot_sync(kFullMask, active);
  if (active) {
    const unsigned peers = __match_any_sync(active_lanes, bin);
    if ((threadIdx.x & 31) == static_cast<unsigned>(__ffs(peers) - 1)) atomicAdd(&hist[bin], __popc(peers));
  }
}

template <int kThreads, int kUnroll, typename Src>
__device__ inline void histogram_pass(const Src& src, int64_t m, int p, uint32_t prefix, unsigned* hist) {
  const int shift = pass_shift(p), high = pass_high(p);
  const uint32_t mask = pass_mask(p), want = prefix >> high;
  // Every thread runs the same number of iterations, so the warp intrinsics below see converged warps.
  for (int64_t base = 0; base < m; base += static_cast<int64_t>(kThreads) * kUnroll) {
    uint32_t key[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads + threadIdx.x;
      key[u] = i < m ? (src.raw(i) & kAbsMask) : kNoKey;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const bool in = key[u] != kNoKey;
      warp_hist_add(hist, (key[u] >> shift) & mask, in && (key[u] >> high) == want);
      if (p == 0) {
        const unsigned nans = __ballot_sync(kFullMask, in && key[u] > kInfBits);
        if ((threadIdx.x & 31) == 0 && nans != 0) atomicAdd(&hist[kNanSlot], __popc(nans));
      }
    }
  }
}

// The digit d with sum(counts[<d]) <= k < sum(counts[<=d]); stores d, k - sum(counts[<d]) and counts[d] in sh.
template <int kThreads, bool kCluster>
__device__ void find_digit(const unsigned* counts, unsigned k, SelectShared<kCluster>& sh) {
  constexpr int kPer = kBins / kThreads;
  const int first = threadIdx.x * kPer;
  unsigned local = 0;
#pragma unroll
  for (int j = 0; j < kPer; ++j) local += counts[first + j];
  const unsigned before = block_exclusive_sum<kThreads>(local, sh.scratch);
  if (k >= before && k - before < local) {  // exactly one thread owns the k-th key
    unsigned c = before;
    for (int j = 0; j < kPer; ++j) {
      const unsigned n = counts[first + j];
      if (k - c < n) {
        sh.digit = first + j;
        sh.k = k - c;
        sh.count = n;
        break;
      }
      c += n;
    }
  }
  __syncthreads();
}

// Makes the pass's histogram complete: the block's own (single block) or the cluster's sum. Ends with a barrier after
// which no other block reads this block's shared memory any more.
template <int kThreads, bool kCluster>
__device__ const unsigned* merge_counts(SelectShared<kCluster>& sh) {
  if constexpr (kCluster) {
#if defined(_CG_HAS_CLUSTER_GROUP)
    cg::cluster_group cluster = cg::this_cluster();
    const unsigned blocks = cluster.num_blocks();
    cluster.sync();  // every block's histogram is complete
    for (int i = threadIdx.x; i <= kBins; i += kThreads) {
      unsigned s = 0;
      for (unsigned r = 0; r < blocks; ++r) s += cluster.map_shared_rank(sh.hist, r)[i];
      sh.total[i] = s;
    }
    cluster.sync();  // remote reads done (hist may be cleared), totals visible
    return sh.total;
#else
    __trap();
    return sh.hist;
#endif
  } else {
    __syncthreads();
    return sh.hist;
  }
}

template <bool kCluster>
__device__ uint32_t merge_min(uint32_t block_value, SelectShared<kCluster>& sh) {
  if constexpr (kCluster) {
#if defined(_CG_HAS_CLUSTER_GROUP)
    cg::cluster_group cluster = cg::this_cluster();
    if (threadIdx.x == 0) sh.min_key = block_value;
    cluster.sync();
    uint32_t result = kNoKey;
    for (unsigned r = 0; r < cluster.num_blocks(); ++r) result = min(result, *cluster.map_shared_rank(&sh.min_key, r));
    cluster.sync();  // keep this block's shared memory alive until every block has read it
    return result;
#else
    __trap();
    return block_value;
#endif
  } else {
    return block_value;
  }
}

// torch.lerp as torch.quantile uses it (weights < 0.5 from the low end), with the FMA nvcc emits for it.
__device__ __forceinline__ float quantile_lerp(uint32_t lo_bits, uint32_t hi_bits, float w) {
  const float a = __uint_as_float(lo_bits), b = __uint_as_float(hi_bits);
  const float d = __fsub_rn(b, a);
  return w < 0.5f ? __fmaf_rn(w, d, a) : __fmaf_rn(__fsub_rn(w, 1.f), d, b);
}

// tau of the row (m elements of it are visible to this block through src; the cluster sees the whole row).
template <int kThreads, int kUnroll, bool kCluster, typename Src>
__device__ float select_tau(const Src& src, int64_t m, const QuantileArgs& qa, SelectShared<kCluster>& sh) {
  uint32_t prefix = 0;
  unsigned k = qa.lo, count = 0;
  for (int p = 0; p < kPasses; ++p) {
    for (int i = threadIdx.x; i <= kBins; i += kThreads) sh.hist[i] = 0;
    __syncthreads();
    histogram_pass<kThreads, kUnroll>(src, m, p, prefix, sh.hist);
    const unsigned* counts = merge_counts<kThreads>(sh);
    if (p == 0 && counts[kNanSlot] != 0) return __uint_as_float(0x7fc00000u);  // NaN: uniform over the cluster
    find_digit<kThreads>(counts, k, sh);
    prefix |= sh.digit << pass_shift(p);
    k = sh.k;
    count = sh.count;
  }
  // prefix = lo-th smallest key; `count` keys equal it and k of them rank below the lo-th. The hi-th (hi = lo + 1)
  // is the same value unless those are used up; then it is the smallest key above.
  uint32_t hi_bits = prefix;
  if (qa.hi != qa.lo && k + 1 >= count) {
    uint32_t local = kNoKey;
    for (int64_t i = threadIdx.x; i < m; i += kThreads) {
      const uint32_t key = src.raw(i) & kAbsMask;
      if (key > prefix) local = min(local, key);
    }
    hi_bits = merge_min<kCluster>(block_min<kThreads>(local, sh.scratch), sh);
  }
  return quantile_lerp(prefix, hi_bits, qa.w);
}

// Host side: the kernel arguments for the ranks the launcher received (torch.quantile's, by the rule of the running
// torch: ../quantile_rank.h; the launcher checked 0 <= lo <= hi <= n - 1 < 2^32).
inline QuantileArgs quantile_args(int64_t lo, int64_t hi, float w) {
  QuantileArgs qa;
  qa.lo = static_cast<uint32_t>(lo);
  qa.hi = static_cast<uint32_t>(hi);
  qa.w = w;
  return qa;
}

}  // namespace row_quantile
}  // namespace cuda
}  // namespace fastat
