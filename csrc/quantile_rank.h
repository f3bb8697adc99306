// torch.quantile's ranks for a row of n values at q (linear interpolation): the lo-th and hi-th smallest values
// (0-based) and the fp32 weight w between them. Torch-free and pure: which of torch's two rules applies is an
// argument, decided once at run time by asking the torch the library runs in (common.h: torch_quantile_rank), and the
// kernels receive (lo, hi, w) as arguments (csrc/cuda/launchers.h, csrc/cpu/zerograd_step.cpp).
//
// rank_fp64 == false (torch < 2.14): rank = (float)q * (float)(n - 1) in fp32; lo = floor(rank), hi = ceil(rank),
//                                    w = rank - lo (fp32).
// rank_fp64 == true (torch >= 2.14): rank = (double)(float)q * (double)(n - 1) in fp64 (pytorch#187574, which lifted
//                                    quantile's 2^24 size limit); lo = floor(rank), hi = ceil(rank),
//                                    w = (float)(rank - lo).
// The Python side states the same rule (fastat.ops.reference.quantile_rank); tests/ops/test_quantile_rank.py holds
// every backend to torch.quantile bit for bit.
#pragma once

#include <cmath>
#include <cstdint>

namespace fastat {

struct QuantileRank {
  int64_t lo, hi;
  float w;
};

inline QuantileRank quantile_rank(double q, int64_t n, bool rank_fp64) {
  const float qf = static_cast<float>(q);
  if (rank_fp64) {
    const double rank = static_cast<double>(qf) * static_cast<double>(n - 1);
    const double lo = std::floor(rank);
    return {static_cast<int64_t>(lo), static_cast<int64_t>(std::ceil(rank)), static_cast<float>(rank - lo)};
  }
  const float rank = qf * static_cast<float>(n - 1);
  const float lo = std::floor(rank);
  return {static_cast<int64_t>(lo), static_cast<int64_t>(std::ceil(rank)), rank - lo};
}

}  // namespace fastat
