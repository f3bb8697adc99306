// torch.quantile's ranks for a row of n values at q (linear interpolation): the lo-th and hi-th smallest values
// (0-based) and the fp32 weight w between them. Torch-free (the CUDA kernels and the CPU kernels share it).
//
// torch < 2.14:  rank = (float)q * (float)(n - 1) in fp32;                lo = floor(rank), hi = ceil(rank),
//                w = rank - lo (fp32).
// torch >= 2.14: rank = (double)(float)q * (double)(n - 1) in fp64 (pytorch#187574, which lifted quantile's 2^24
//                size limit); lo = floor(rank), hi = ceil(rank), w = (float)(rank - lo).
// The build defines FASTAT_QUANTILE_RANK64=1 when it compiles against torch >= 2.14 (setup.py, CMakeLists.txt), so
// the kernels match the torch they are loaded into; csrc/checks.h refuses a mismatch at compile time.
#pragma once

#include <cmath>
#include <cstdint>

#ifndef FASTAT_QUANTILE_RANK64
#define FASTAT_QUANTILE_RANK64 0
#endif

namespace fastat {

struct QuantileRank {
  int64_t lo, hi;
  float w;
};

inline QuantileRank quantile_rank(double q, int64_t n) {
  const float qf = static_cast<float>(q);
#if FASTAT_QUANTILE_RANK64
  const double rank = static_cast<double>(qf) * static_cast<double>(n - 1);
  const double lo = std::floor(rank);
  return {static_cast<int64_t>(lo), static_cast<int64_t>(std::ceil(rank)), static_cast<float>(rank - lo)};
#else
  const float rank = qf * static_cast<float>(n - 1);
  const float lo = std::floor(rank);
  return {static_cast<int64_t>(lo), static_cast<int64_t>(std::ceil(rank)), rank - lo};
#endif
}

}  // namespace fastat
