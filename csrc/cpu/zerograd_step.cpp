// ZeroGrad step on CPU. Per sample i (a row of n elements, in the memory format of δ):
//   τ_i = torch.quantile(|g_i|, q)  (k-th order statistics by nth_element, the running torch's rank rule and its
//   FMA lerp; NaN row -> τ = NaN), δ' = box(clamp(δ + (|g| >= τ_i ? α·sign(g) : 0), -ε, ε), x).
// Rows are independent: at::parallel_for over rows, one scratch copy of |g_i| per task.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "checks.h"
#include "cpu/cpu_utils.h"

namespace fastat {
namespace {

// torch.quantile(a[0:n], q) with linear interpolation, for a NaN-free row; reorders `a`.
float row_quantile(float* a, int64_t n, const QuantileRank& r) {
  const int64_t lo = r.lo, hi = r.hi;
  const float w = r.w;
  std::nth_element(a, a + lo, a + n);
  const float below = a[lo];
  const float above = hi == lo ? below : *std::min_element(a + lo + 1, a + n);
  const float d = above - below;  // computed even when hi == lo: inf - inf = NaN, as in torch's lerp
  return w < 0.5f ? std::fma(w, d, below) : std::fma(w - 1.0f, d, above);
}

template <typename D, typename G>
void zerograd_rows(const D* delta, const G* grad, const D* x, D* out, int64_t rows, int64_t n, float eps,
                   float alpha, const QuantileRank& rank) {
  at::parallel_for(0, rows, cpu::row_grain(n), [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(n);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t base = r * n;
      bool has_nan = false;
      for (int64_t k = 0; k < n; ++k) {
        const float a = std::abs(static_cast<float>(grad[base + k]));
        has_nan |= a != a;
        scratch[k] = a;
      }
      const float tau = has_nan ? cpu::kNaN : row_quantile(scratch.data(), n, rank);
      for (int64_t k = base; k < base + n; ++k) {
        const float g = static_cast<float>(grad[k]);
        const float step = std::abs(g) >= tau ? alpha * cpu::sign(g) : 0.0f;
        const float d = cpu::clamp(static_cast<float>(delta[k]) + step, -eps, eps);
        out[k] = static_cast<D>(cpu::box(d, static_cast<float>(x[k])));
      }
    }
  });
}

}  // namespace

at::Tensor zerograd_step_cpu(const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x, double eps,
                             double alpha, double q) {
  check_zerograd_step(delta, grad, x, eps, alpha, q);
  const auto fmt = row_format(delta);
  const at::Tensor d = delta.contiguous(fmt), g = grad.contiguous(fmt), xc = x.contiguous(fmt);
  RowOutput res(delta, fmt);
  const int64_t rows = delta.size(0), n = row_numel(delta);
  const QuantileRank rank = torch_quantile_rank(q, n);  // decided by the running torch (common.h)
  FASTAT_DISPATCH_FLOAT(d.scalar_type(), "zerograd_step_cpu", [&] {
    using delta_t = scalar_t;
    FASTAT_DISPATCH_FLOAT(g.scalar_type(), "zerograd_step_cpu", [&] {
      zerograd_rows(d.const_data_ptr<delta_t>(), g.const_data_ptr<scalar_t>(), xc.const_data_ptr<delta_t>(),
                    res.work.data_ptr<delta_t>(), rows, n, static_cast<float>(eps), static_cast<float>(alpha), rank);
    });
  });
  return res.finish();
}

}  // namespace fastat

TORCH_LIBRARY_IMPL(fastat, CPU, m) { m.impl("zerograd_step", &fastat::zerograd_step_cpu); }
