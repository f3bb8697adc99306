// ATAS step on CPU. Per sample b (index/offsets range-checked first):
//   warmup: α_b = ε; else n2 = (float) Σ g² accumulated in fp64, v = β·v_buf[index_b] + (1−β)·n2 (stored back),
//   α_b = clamp(γ/c · 1/(1 + √v / c), step_min, step_max), evaluated with the same ATen ops as the reference on the
//   (B,) vector, so v and α are bit-identical to it;
//   xa = clamp(min(max(x_adv + α_b·sign(g), x − ε), x + ε), 0, 1); the delta_buf window (as in atas_gather) = xa − x.
// at::parallel_for over rows for the norms, and over the B·C image planes for the update.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/cpu_utils.h"

namespace fastat {
namespace {

// n2[b] = (float) Σ_k (double) g[b, k]², summed in order within the row.
void row_sq_norms(const float* g, float* n2, int64_t rows, int64_t n) {
  at::parallel_for(0, rows, cpu::row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      double acc = 0.0;
      for (int64_t k = r * n; k < (r + 1) * n; ++k) acc += static_cast<double>(g[k]) * static_cast<double>(g[k]);
      n2[r] = static_cast<float>(acc);
    }
  });
}

template <typename D, typename X>
void step_planes(D* buf, const int64_t* index, const int64_t* offsets, const bool* flips, const float* step,
                 const float* g, const X* x_adv, const X* x, X* out, float eps, int64_t batch, int64_t chans,
                 int64_t height, int64_t width, int64_t buf_h, int64_t buf_w) {
  at::parallel_for(0, batch * chans, cpu::row_grain(height * width), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = plane / chans, c = plane % chans;
      D* win = buf + ((index[b] * chans + c) * buf_h + offsets[2 * b]) * buf_w + offsets[2 * b + 1];
      const bool flip = flips[b];
      const float alpha = step[b];
      for (int64_t i = 0; i < height; ++i) {
        const int64_t row = (plane * height + i) * width;
        D* wr = win + i * buf_w;
        for (int64_t j = 0; j < width; ++j) {
          const float xf = static_cast<float>(x[row + j]);
          float xa = static_cast<float>(x_adv[row + j]) + alpha * cpu::sign(g[row + j]);
          xa = cpu::clamp(cpu::minimum(cpu::maximum(xa, xf - eps), xf + eps), 0.0f, 1.0f);
          wr[flip ? width - 1 - j : j] = static_cast<D>(xa - xf);
          out[row + j] = static_cast<X>(xa);
        }
      }
    }
  });
}

}  // namespace

at::Tensor atas_step_cpu(at::Tensor& delta_buf, at::Tensor& v_buf, const at::Tensor& index, const at::Tensor& offsets,
                         const at::Tensor& flips, const at::Tensor& grad, const at::Tensor& x_adv, const at::Tensor& x,
                         double eps, double c, double beta, double gamma_over_c, double step_min, double step_max,
                         bool warmup) {
  check_atas_step(delta_buf, v_buf, index, offsets, flips, grad, x_adv, x, eps, c, beta, gamma_over_c, step_min,
                  step_max);
  const at::Tensor idx = index.contiguous(), off = offsets.contiguous(), flp = flips.contiguous();
  cpu::check_atas_values("atas_step", idx, off, delta_buf.size(0), delta_buf.size(2) - x.size(2));
  const at::Tensor g = grad.to(at::kFloat).contiguous(), xa = x_adv.contiguous(), xc = x.contiguous();
  const int64_t batch = x.size(0);
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor step;
  if (warmup) {
    step = at::full({batch}, eps, f32);
  } else {
    at::Tensor n2 = at::empty({batch}, f32);
    row_sq_norms(g.const_data_ptr<float>(), n2.data_ptr<float>(), batch, row_numel(g));
    const at::Tensor v = v_buf.index_select(0, idx).mul(beta).add(n2.mul(1.0 - beta));
    v_buf.index_copy_(0, idx, v);
    step = at::sqrt(v).div(c).add(1).reciprocal().mul(gamma_over_c).clamp(step_min, step_max);
  }
  RowOutput res(x_adv, at::MemoryFormat::Contiguous);
  FASTAT_DISPATCH_FLOAT(delta_buf.scalar_type(), "atas_step_cpu", [&] {
    using buf_t = scalar_t;
    FASTAT_DISPATCH_FLOAT(xc.scalar_type(), "atas_step_cpu", [&] {
      step_planes(delta_buf.data_ptr<buf_t>(), idx.const_data_ptr<int64_t>(), off.const_data_ptr<int64_t>(),
                  flp.const_data_ptr<bool>(), step.const_data_ptr<float>(), g.const_data_ptr<float>(),
                  xa.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), res.work.data_ptr<scalar_t>(),
                  static_cast<float>(eps), batch, x.size(1), x.size(2), x.size(3), delta_buf.size(2),
                  delta_buf.size(3));
    });
  });
  return res.finish();
}

}  // namespace fastat

TORCH_LIBRARY_IMPL(fastat, CPU, m) { m.impl("atas_step", &fastat::atas_step_cpu); }
