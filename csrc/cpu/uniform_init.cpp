// Random start on CPU: δ₀ = box(u, x), u = at::empty(x.shape, fp32).uniform_(-ε, ε, generator), the very draw the
// reference makes (so equal to it for the same generator state); returned contiguous in x's dtype.
// The box is elementwise: at::parallel_for over the flat elements.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/cpu_utils.h"

namespace fastat {

at::Tensor uniform_init_cpu(const at::Tensor& x, double eps, std::optional<at::Generator> generator) {
  check_uniform_init(x, eps);
  const at::Tensor u = at::empty(x.sizes(), x.options().dtype(at::kFloat)).uniform_(-eps, eps, generator);
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  FASTAT_DISPATCH_FLOAT(x.scalar_type(), "uniform_init_cpu", [&] {
    const float* up = u.const_data_ptr<float>();
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), int64_t(1) << 16, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) op[k] = static_cast<scalar_t>(cpu::box(up[k], static_cast<float>(xp[k])));
    });
  });
  return out;
}

}  // namespace fastat

TORCH_LIBRARY_IMPL(fastat, CPU, m) { m.impl("uniform_init", &fastat::uniform_init_cpu); }
