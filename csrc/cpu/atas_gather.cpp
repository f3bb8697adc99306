// ATAS start point on CPU: out[b,c,i,j] = clamp(x[b,c,i,j] + delta_buf[index[b], c, off[b,0]+i, off[b,1]+j'], 0, 1)
// with j' = W-1-j if flips[b] else j, in x's dtype. index/offsets are range-checked first (never read out of bounds).
// at::parallel_for over the B·C image planes.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/cpu_utils.h"

namespace fastat {
namespace {

template <typename D, typename X>
void gather_planes(const D* buf, const int64_t* index, const int64_t* offsets, const bool* flips, const X* x, X* out,
                   int64_t batch, int64_t chans, int64_t height, int64_t width, int64_t buf_h, int64_t buf_w) {
  at::parallel_for(0, batch * chans, cpu::row_grain(height * width), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = plane / chans, c = plane % chans;
      const D* win = buf + ((index[b] * chans + c) * buf_h + offsets[2 * b]) * buf_w + offsets[2 * b + 1];
      const bool flip = flips[b];
      for (int64_t i = 0; i < height; ++i) {
        const X* xr = x + (plane * height + i) * width;
        X* o = out + (plane * height + i) * width;
        const D* wr = win + i * buf_w;
        for (int64_t j = 0; j < width; ++j) {
          const float d = static_cast<float>(wr[flip ? width - 1 - j : j]);
          o[j] = static_cast<X>(cpu::clamp(static_cast<float>(xr[j]) + d, 0.0f, 1.0f));
        }
      }
    }
  });
}

}  // namespace

at::Tensor atas_gather_cpu(const at::Tensor& delta_buf, const at::Tensor& index, const at::Tensor& offsets,
                           const at::Tensor& flips, const at::Tensor& x) {
  check_atas_gather(delta_buf, index, offsets, flips, x);
  const at::Tensor idx = index.contiguous(), off = offsets.contiguous(), flp = flips.contiguous(), xc = x.contiguous();
  cpu::check_atas_values("atas_gather", idx, off, delta_buf.size(0), delta_buf.size(2) - x.size(2));
  RowOutput res(x, at::MemoryFormat::Contiguous);
  FASTAT_DISPATCH_FLOAT(delta_buf.scalar_type(), "atas_gather_cpu", [&] {
    using buf_t = scalar_t;
    FASTAT_DISPATCH_FLOAT(xc.scalar_type(), "atas_gather_cpu", [&] {
      gather_planes(delta_buf.const_data_ptr<buf_t>(), idx.const_data_ptr<int64_t>(), off.const_data_ptr<int64_t>(),
                    flp.const_data_ptr<bool>(), xc.const_data_ptr<scalar_t>(), res.work.data_ptr<scalar_t>(),
                    x.size(0), x.size(1), x.size(2), x.size(3), delta_buf.size(2), delta_buf.size(3));
    });
  });
  return res.finish();
}

}  // namespace fastat

TORCH_LIBRARY_IMPL(fastat, CPU, m) { m.impl("atas_gather", &fastat::atas_gather_cpu); }
