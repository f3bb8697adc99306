// MultiGrad step on CPU: G = Σ_s sign(g_s) (exact integer votes), keep = |G| >= 2·th − S (th = S by default),
// δ = box(clamp(keep ? α·sign(G) : 0, -ε, ε), x), in x's dtype. at::parallel_for over rows (in x's memory format),
// with one int32 row of votes per task, filled start by start so every gradient is read contiguously.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <vector>

#include "checks.h"
#include "cpu/cpu_utils.h"

namespace fastat {
namespace {

template <typename X, typename G>
void multigrad_rows(const G* grads, const X* x, X* out, int64_t starts, int64_t rows, int64_t n, float eps,
                    float alpha, int64_t min_votes) {
  at::parallel_for(0, rows, cpu::row_grain(n * starts), [&](int64_t begin, int64_t end) {
    std::vector<int32_t> votes(n);
    for (int64_t r = begin; r < end; ++r) {
      std::fill(votes.begin(), votes.end(), 0);
      for (int64_t s = 0; s < starts; ++s) {
        const G* g = grads + (s * rows + r) * n;
        for (int64_t k = 0; k < n; ++k) votes[k] += static_cast<int32_t>(cpu::sign(static_cast<float>(g[k])));
      }
      const int64_t base = r * n;
      for (int64_t k = 0; k < n; ++k) {
        const int32_t v = votes[k];
        const float step = std::abs(v) >= min_votes ? alpha * static_cast<float>((v > 0) - (v < 0)) : 0.0f;
        out[base + k] = static_cast<X>(cpu::box(cpu::clamp(step, -eps, eps), static_cast<float>(x[base + k])));
      }
    }
  });
}

}  // namespace

at::Tensor multigrad_step_cpu(const at::Tensor& grads, const at::Tensor& x, double eps, double alpha,
                              std::optional<int64_t> threshold) {
  check_multigrad_step(grads, x, eps, alpha, threshold);
  const auto fmt = row_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  // Each start grads[s] must have x's element order: for channels_last x, order grads as (S, B, H, W, C).
  const at::Tensor g =
      fmt == at::MemoryFormat::ChannelsLast ? grads.permute({0, 1, 3, 4, 2}).contiguous() : grads.contiguous();
  RowOutput res(x, fmt);
  const int64_t starts = grads.size(0), rows = x.size(0), n = row_numel(x);
  const int64_t min_votes = 2 * threshold.value_or(starts) - starts;
  FASTAT_DISPATCH_FLOAT(xc.scalar_type(), "multigrad_step_cpu", [&] {
    using x_t = scalar_t;
    FASTAT_DISPATCH_FLOAT(g.scalar_type(), "multigrad_step_cpu", [&] {
      multigrad_rows(g.const_data_ptr<scalar_t>(), xc.const_data_ptr<x_t>(), res.work.data_ptr<x_t>(), starts, rows,
                     n, static_cast<float>(eps), static_cast<float>(alpha), min_votes);
    });
  });
  return res.finish();
}

}  // namespace fastat

TORCH_LIBRARY_IMPL(fastat, CPU, m) { m.impl("multigrad_step", &fastat::multigrad_step_cpu); }
