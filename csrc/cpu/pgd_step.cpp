// PGD step on CPU: δ' = box(clamp(δ + α·sign(g), -ε, ε), x) on rows with active[b] (every row when active is None);
// inactive rows are copied unchanged. Elementwise; at::parallel_for over rows (in δ's memory format).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "checks.h"
#include "cpu/cpu_utils.h"

namespace fastat {
namespace {

template <typename D, typename G>
void pgd_rows(const D* delta, const G* grad, const D* x, const bool* active, D* out, int64_t rows, int64_t n,
              float eps, float alpha) {
  at::parallel_for(0, rows, cpu::row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t base = r * n;
      if (active != nullptr && !active[r]) {
        std::copy(delta + base, delta + base + n, out + base);
        continue;
      }
      for (int64_t k = base; k < base + n; ++k) {
        const float step = alpha * cpu::sign(static_cast<float>(grad[k]));
        const float d = cpu::clamp(static_cast<float>(delta[k]) + step, -eps, eps);
        out[k] = static_cast<D>(cpu::box(d, static_cast<float>(x[k])));
      }
    }
  });
}

}  // namespace

at::Tensor pgd_step_cpu(const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x, double eps,
                        double alpha, const std::optional<at::Tensor>& active) {
  check_pgd_step(delta, grad, x, eps, alpha, active);
  const auto fmt = row_format(delta);
  const at::Tensor d = delta.contiguous(fmt), g = grad.contiguous(fmt), xc = x.contiguous(fmt);
  const bool has_active = active.has_value() && active->defined();
  const at::Tensor act = has_active ? active->contiguous() : at::Tensor();
  RowOutput res(delta, fmt);
  const int64_t rows = delta.size(0), n = row_numel(delta);
  FASTAT_DISPATCH_FLOAT(d.scalar_type(), "pgd_step_cpu", [&] {
    using delta_t = scalar_t;
    FASTAT_DISPATCH_FLOAT(g.scalar_type(), "pgd_step_cpu", [&] {
      pgd_rows(d.const_data_ptr<delta_t>(), g.const_data_ptr<scalar_t>(), xc.const_data_ptr<delta_t>(),
               has_active ? act.const_data_ptr<bool>() : nullptr, res.work.data_ptr<delta_t>(), rows, n,
               static_cast<float>(eps), static_cast<float>(alpha));
    });
  });
  return res.finish();
}

}  // namespace fastat

TORCH_LIBRARY_IMPL(fastat, CPU, m) { m.impl("pgd_step", &fastat::pgd_step_cpu); }
