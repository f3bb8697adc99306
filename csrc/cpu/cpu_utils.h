// Scalar helpers shared by the CPU kernels: torch's elementwise semantics in fp32, output allocation, value checks.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "common.h"

namespace fastat {
namespace cpu {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// torch.sign on CPU is (0 < v) - (v < 0): sign(±0) = 0 and sign(NaN) = 0.
inline float sign(float v) { return static_cast<float>((0.0f < v) - (v < 0.0f)); }
// torch.clamp(v, lo, hi) with scalar bounds: max first, then min; NaN propagates.
inline float clamp(float v, float lo, float hi) { return v != v ? v : std::min(std::max(v, lo), hi); }
// torch.maximum / torch.minimum: NaN if either operand is NaN.
inline float maximum(float a, float b) { return (a != a || b != b) ? kNaN : std::max(a, b); }
inline float minimum(float a, float b) { return (a != a || b != b) ? kNaN : std::min(a, b); }
// box(d, x) = min(max(d, -x), 1 - x): keeps x + d in [0, 1].
inline float box(float d, float x) { return minimum(maximum(d, -x), 1.0f - x); }

// Rows per at::parallel_for task: about 64k elements per task, at least one row.
inline int64_t row_grain(int64_t n) { return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(n, 1)); }

// CPU can afford value checks: index in [0, N) and offsets in [0, 2p], else ValueError naming the argument.
inline void check_atas_values(const char* op, const at::Tensor& index, const at::Tensor& offsets, int64_t n,
                              int64_t pad2) {
  if (index.numel() == 0) return;
  const int64_t* idx = index.const_data_ptr<int64_t>();
  const int64_t* off = offsets.const_data_ptr<int64_t>();
  const auto [ilo, ihi] = std::minmax_element(idx, idx + index.numel());
  TORCH_CHECK_VALUE(*ilo >= 0 && *ihi < n, "fastat.", op, ": argument 'index' must be in [0, N=", n,
                    "), got values in [", *ilo, ", ", *ihi, "]");
  const auto [olo, ohi] = std::minmax_element(off, off + offsets.numel());
  TORCH_CHECK_VALUE(*olo >= 0 && *ohi <= pad2, "fastat.", op, ": argument 'offsets' must be in [0, 2p=", pad2,
                    "], got values in [", *olo, ", ", *ohi, "]");
}

}  // namespace cpu
}  // namespace fastat
