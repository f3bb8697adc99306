// SORA's random-scaled step on CPU: δ' = box(δ + (α·u)·sign(g), x), u = at::empty(x.shape, fp32).uniform_(0, 1,
// generator), the very draw the reference makes (and torch.rand's), so equal to it bit for bit for the same generator
// state; no ε-projection (SecondOrderAT/SORA `src/attacks/sora.py`). α is the 0-dim tensor's value widened to fp32
// (a CPU tensor: reading it is no host sync). Each product and the sum are rounded on their own, as the reference's
// separate torch ops are (this file is built with -ffp-contract=off). Returned contiguous in δ's dtype.
// Elementwise over the flat, logical-order elements (the order u is drawn in): at::parallel_for.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/cpu_utils.h"

namespace fastat {
namespace {

template <typename D, typename G>
void sora_elements(const D* delta, const G* grad, const D* x, const float* u, D* out, int64_t numel, float alpha) {
  at::parallel_for(0, numel, int64_t(1) << 16, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const float step = (alpha * u[k]) * cpu::sign(static_cast<float>(grad[k]));
      out[k] = static_cast<D>(cpu::box(static_cast<float>(delta[k]) + step, static_cast<float>(x[k])));
    }
  });
}

}  // namespace

at::Tensor sora_step_cpu(const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x,
                         const at::Tensor& alpha, std::optional<at::Generator> generator) {
  check_sora_step(delta, grad, x, alpha);
  const at::Tensor u = at::empty(x.sizes(), x.options().dtype(at::kFloat)).uniform_(0, 1, generator);
  const at::Tensor d = delta.contiguous(), g = grad.contiguous(), xc = x.contiguous();
  const float a = alpha.to(at::kFloat).item<float>();
  at::Tensor out = at::empty(delta.sizes(), delta.options());  // contiguous, like the fake
  FASTAT_DISPATCH_FLOAT(d.scalar_type(), "sora_step_cpu", [&] {
    using delta_t = scalar_t;
    FASTAT_DISPATCH_FLOAT(g.scalar_type(), "sora_step_cpu", [&] {
      sora_elements(d.const_data_ptr<delta_t>(), g.const_data_ptr<scalar_t>(), xc.const_data_ptr<delta_t>(),
                    u.const_data_ptr<float>(), out.data_ptr<delta_t>(), d.numel(), a);
    });
  });
  return out;
}

}  // namespace fastat

TORCH_LIBRARY_IMPL(fastat, CPU, m) { m.impl("sora_step", &fastat::sora_step_cpu); }
