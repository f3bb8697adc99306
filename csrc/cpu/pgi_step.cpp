// FGSM-PGI step on CPU (python/fastat/ops/reference.py: pgi_step). Per element of the B crop windows (index/offsets
// range-checked first; window addressing as in atas_gather), all in fp32, each operation rounded on its own
// (-ffp-contract=off), in the reference's order:
//   d0 = x_adv − x;  m = g / l1 + decay·mom  (l1 = ‖g‖₁ of the batch, read once);
//   next = box(clamp(d0 + ε·sign(m), −ε, ε), x);  out = clamp(min(max((x + d0) + ε·sign(g), x − ε), x + ε), 0, 1);
//   the windows of mom_buf and delta_buf get m and next, out is returned.
// at::parallel_for over the B·C image planes.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/cpu_utils.h"

namespace fastat {
namespace {

template <typename D, typename X>
void pgi_planes(D* delta_buf, D* mom_buf, const int64_t* index, const int64_t* offsets, const bool* flips,
                const float* g, float l1, const X* x_adv, const X* x, X* out, float eps, float decay, int64_t batch,
                int64_t chans, int64_t height, int64_t width, int64_t buf_h, int64_t buf_w) {
  at::parallel_for(0, batch * chans, cpu::row_grain(height * width), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = plane / chans, c = plane % chans;
      const int64_t base = ((index[b] * chans + c) * buf_h + offsets[2 * b]) * buf_w + offsets[2 * b + 1];
      const bool flip = flips[b];
      for (int64_t i = 0; i < height; ++i) {
        const int64_t row = (plane * height + i) * width;
        D* mom_row = mom_buf + base + i * buf_w;
        D* delta_row = delta_buf + base + i * buf_w;
        for (int64_t j = 0; j < width; ++j) {
          const int64_t w = flip ? width - 1 - j : j;
          const float xf = static_cast<float>(x[row + j]);
          const float d0 = static_cast<float>(x_adv[row + j]) - xf;
          const float gv = g[row + j];
          const float m = gv / l1 + decay * static_cast<float>(mom_row[w]);
          const float next = cpu::box(cpu::clamp(d0 + eps * cpu::sign(m), -eps, eps), xf);
          const float xa = cpu::clamp(cpu::minimum(cpu::maximum(xf + d0 + eps * cpu::sign(gv), xf - eps), xf + eps),
                                      0.0f, 1.0f);
          mom_row[w] = static_cast<D>(m);
          delta_row[w] = static_cast<D>(next);
          out[row + j] = static_cast<X>(xa);
        }
      }
    }
  });
}

}  // namespace

at::Tensor pgi_step_cpu(at::Tensor& delta_buf, at::Tensor& mom_buf, const at::Tensor& index, const at::Tensor& offsets,
                        const at::Tensor& flips, const at::Tensor& grad, const at::Tensor& grad_l1,
                        const at::Tensor& x_adv, const at::Tensor& x, double eps, double decay) {
  check_pgi_step(delta_buf, mom_buf, index, offsets, flips, grad, grad_l1, x_adv, x, eps, decay);
  const at::Tensor idx = index.contiguous(), off = offsets.contiguous(), flp = flips.contiguous();
  cpu::check_atas_values("pgi_step", idx, off, delta_buf.size(0), delta_buf.size(2) - x.size(2));
  const at::Tensor g = grad.to(at::kFloat).contiguous(), xa = x_adv.contiguous(), xc = x.contiguous();
  // torch divides an fp32 tensor by a 0-dim tensor of any float dtype after widening it to fp32 (exact).
  const float l1 = grad_l1.to(at::kFloat).item<float>();
  RowOutput res(x_adv, at::MemoryFormat::Contiguous);
  FASTAT_DISPATCH_FLOAT(delta_buf.scalar_type(), "pgi_step_cpu", [&] {
    using buf_t = scalar_t;
    FASTAT_DISPATCH_FLOAT(xc.scalar_type(), "pgi_step_cpu", [&] {
      pgi_planes(delta_buf.data_ptr<buf_t>(), mom_buf.data_ptr<buf_t>(), idx.const_data_ptr<int64_t>(),
                 off.const_data_ptr<int64_t>(), flp.const_data_ptr<bool>(), g.const_data_ptr<float>(), l1,
                 xa.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), res.work.data_ptr<scalar_t>(),
                 static_cast<float>(eps), static_cast<float>(decay), x.size(0), x.size(1), x.size(2), x.size(3),
                 delta_buf.size(2), delta_buf.size(3));
    });
  });
  return res.finish();
}

}  // namespace fastat

TORCH_LIBRARY_IMPL(fastat, CPU, m) { m.impl("pgi_step", &fastat::pgi_step_cpu); }
