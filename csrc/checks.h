// Metadata-only argument checks of every fastat op, shared by the CPU kernels and the CUDA bindings. They mirror
// python/fastat/ops/_validate.py (same rules and messages: ValueError / TypeError naming the argument), so that calling
// torch.ops.fastat.<op> directly can never crash or index out of bounds. They never look at tensor values.
#pragma once

#include <cmath>
#include <optional>

#include "common.h"

namespace fastat {
namespace detail {

inline void check_float(const char* op, const char* name, const at::Tensor& t, int64_t min_ndim = 1) {
  auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, "fastat.", op, ": argument '", name,
                   "' must have dtype float32, bfloat16 or float16, got ", st);
  TORCH_CHECK_VALUE(t.dim() >= min_ndim, "fastat.", op, ": argument '", name, "' must have at least ", min_ndim,
                    " dimension(s), got shape ", t.sizes());
}

inline void check_ndim(const char* op, const char* name, const at::Tensor& t, int64_t ndim) {
  TORCH_CHECK_VALUE(t.dim() == ndim, "fastat.", op, ": argument '", name, "' must be ", ndim, "-D, got shape ",
                    t.sizes());
}

// A per-sample tensor: dtype `dtype`, shape (batch,) or (batch, trailing).
inline void check_per_row(const char* op, const char* name, const at::Tensor& t, int64_t batch, at::ScalarType dtype,
                          int64_t trailing = -1) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, "fastat.", op, ": argument '", name, "' must have dtype ", dtype, ", got ",
                   t.scalar_type());
  bool ok = trailing < 0 ? (t.dim() == 1 && t.size(0) == batch)
                         : (t.dim() == 2 && t.size(0) == batch && t.size(1) == trailing);
  TORCH_CHECK_VALUE(ok, "fastat.", op, ": argument '", name, "' must have shape (", batch,
                    trailing < 0 ? "," : ", ", trailing < 0 ? "" : std::to_string(trailing), "), got ", t.sizes());
}

inline void check_nonempty_rows(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(!(t.numel() == 0 && t.size(0) > 0), "fastat.", op, ": argument '", name,
                    "' has empty samples (shape ", t.sizes(), ")");
}

// Shared by zerograd_step and pgd_step: δ, g, x of one shape (B, ...) on one device, x and δ of one dtype.
inline void check_elementwise(const char* op, const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x,
                              double eps, double alpha) {
  check_float(op, "delta", delta);
  check_float(op, "grad", grad);
  check_float(op, "x", x);
  FASTAT_CHECK_SAME_SHAPE(op, grad, delta);
  FASTAT_CHECK_SAME_SHAPE(op, x, delta);
  FASTAT_CHECK_SAME_DEVICE(op, grad, delta);
  FASTAT_CHECK_SAME_DEVICE(op, x, delta);
  TORCH_CHECK_TYPE(x.scalar_type() == delta.scalar_type(), "fastat.", op, ": arguments 'x' (", x.scalar_type(),
                   ") and 'delta' (", delta.scalar_type(), ") must have the same dtype");
  check_nonempty_rows(op, "delta", delta);
  FASTAT_CHECK_POSITIVE(op, eps);
  FASTAT_CHECK_POSITIVE(op, alpha);
}

inline void check_atas_common(const char* op, const at::Tensor& delta_buf, const at::Tensor& index,
                              const at::Tensor& offsets, const at::Tensor& flips, const at::Tensor& x) {
  check_float(op, "delta_buf", delta_buf);
  check_ndim(op, "delta_buf", delta_buf, 4);
  check_float(op, "x", x);
  check_ndim(op, "x", x, 4);
  const int64_t batch = x.size(0), pad2 = delta_buf.size(2) - x.size(2);
  FASTAT_CHECK_VALUE(op, delta_buf.size(1) == x.size(1), delta_buf, "has ", delta_buf.size(1), " channels but 'x' has ",
                     x.size(1));
  FASTAT_CHECK_VALUE(op, pad2 >= 0 && pad2 % 2 == 0 && delta_buf.size(3) - x.size(3) == pad2, delta_buf,
                     "must be (N, C, H+2p, W+2p) for x of (B, C, H, W) = ", x.sizes(), ", got ", delta_buf.sizes());
  FASTAT_CHECK_VALUE(op, delta_buf.size(0) >= 1 || batch == 0, delta_buf, "holds no examples (N = 0)");
  FASTAT_CHECK_VALUE(op, delta_buf.is_contiguous(), delta_buf,
                     "must be contiguous (it is indexed, and written in place by the step ops)");
  check_per_row(op, "index", index, batch, at::kLong);
  check_per_row(op, "offsets", offsets, batch, at::kLong, 2);
  check_per_row(op, "flips", flips, batch, at::kBool);
  FASTAT_CHECK_SAME_DEVICE(op, index, delta_buf);
  FASTAT_CHECK_SAME_DEVICE(op, offsets, delta_buf);
  FASTAT_CHECK_SAME_DEVICE(op, flips, delta_buf);
  FASTAT_CHECK_SAME_DEVICE(op, x, delta_buf);
}

// What atas_step and pgi_step take alike besides the buffers (the C++ twin of _validate._check_step_inputs): the
// batch's gradient and adversarial input, float, shaped and placed as x, x_adv in x's dtype.
inline void check_step_inputs(const char* op, const at::Tensor& grad, const at::Tensor& x_adv, const at::Tensor& x) {
  check_float(op, "grad", grad);
  check_float(op, "x_adv", x_adv);
  FASTAT_CHECK_SAME_SHAPE(op, grad, x);
  FASTAT_CHECK_SAME_SHAPE(op, x_adv, x);
  TORCH_CHECK_TYPE(x_adv.scalar_type() == x.scalar_type(), "fastat.", op, ": arguments 'x_adv' (", x_adv.scalar_type(),
                   ") and 'x' (", x.scalar_type(), ") must have the same dtype");
  FASTAT_CHECK_SAME_DEVICE(op, grad, x);
  FASTAT_CHECK_SAME_DEVICE(op, x_adv, x);
}

}  // namespace detail

inline void check_zerograd_step(const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x, double eps,
                                double alpha, double q) {
  const char* op = "zerograd_step";
  detail::check_elementwise(op, delta, grad, x, eps, alpha);
  FASTAT_CHECK_VALUE(op, q >= 0.0 && q <= 1.0, q, "must be in [0.0, 1.0], got ", q);  // also rejects NaN
  const int64_t n = row_numel(delta);
  TORCH_CHECK_VALUE(n < (int64_t(1) << 24), "fastat.", op, ": samples of ", n,
                    " elements exceed torch.quantile's 2**24 limit");
}

inline void check_pgd_step(const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x, double eps,
                           double alpha, const std::optional<at::Tensor>& active) {
  const char* op = "pgd_step";
  detail::check_elementwise(op, delta, grad, x, eps, alpha);
  if (active.has_value() && active->defined()) {
    detail::check_per_row(op, "active", *active, delta.size(0), at::kBool);
    FASTAT_CHECK_SAME_DEVICE(op, *active, delta);
  }
}

inline void check_multigrad_step(const at::Tensor& grads, const at::Tensor& x, double eps, double alpha,
                                 std::optional<int64_t> threshold) {
  const char* op = "multigrad_step";
  detail::check_float(op, "grads", grads, 2);
  detail::check_float(op, "x", x);
  FASTAT_CHECK_VALUE(op, grads.sizes().slice(1) == x.sizes(), grads, "must have shape (S, *x.shape) with x.shape = ",
                     x.sizes(), ", got ", grads.sizes());
  FASTAT_CHECK_SAME_DEVICE(op, grads, x);
  detail::check_nonempty_rows(op, "x", x);
  FASTAT_CHECK_POSITIVE(op, eps);
  FASTAT_CHECK_POSITIVE(op, alpha);
  const int64_t s_count = grads.size(0);
  FASTAT_CHECK_VALUE(op, s_count >= 1, grads, "must hold at least one start (S >= 1)");
  if (threshold.has_value()) {
    const int64_t th = *threshold;
    FASTAT_CHECK_VALUE(op, th >= 1 && th <= s_count, threshold, "must be in [1, S=", s_count, "], got ", th);
  }
}

inline void check_atas_gather(const at::Tensor& delta_buf, const at::Tensor& index, const at::Tensor& offsets,
                              const at::Tensor& flips, const at::Tensor& x) {
  detail::check_atas_common("atas_gather", delta_buf, index, offsets, flips, x);
}

inline void check_atas_step(const at::Tensor& delta_buf, const at::Tensor& v_buf, const at::Tensor& index,
                            const at::Tensor& offsets, const at::Tensor& flips, const at::Tensor& grad,
                            const at::Tensor& x_adv, const at::Tensor& x, double eps, double c, double beta,
                            double gamma_over_c, double step_min, double step_max) {
  const char* op = "atas_step";
  detail::check_atas_common(op, delta_buf, index, offsets, flips, x);
  detail::check_step_inputs(op, grad, x_adv, x);
  FASTAT_CHECK_DTYPE(op, v_buf, at::kFloat);
  detail::check_ndim(op, "v_buf", v_buf, 1);
  FASTAT_CHECK_VALUE(op, v_buf.size(0) == delta_buf.size(0), v_buf, "must have shape (N,) = (", delta_buf.size(0),
                     ",), got ", v_buf.sizes());
  FASTAT_CHECK_VALUE(op, v_buf.is_contiguous(), v_buf, "must be contiguous (it is written in place)");
  FASTAT_CHECK_SAME_DEVICE(op, v_buf, x);
  FASTAT_CHECK_POSITIVE(op, eps);
  FASTAT_CHECK_POSITIVE(op, c);
  FASTAT_CHECK_VALUE(op, beta >= 0.0 && beta <= 1.0, beta, "must be in [0.0, 1.0], got ", beta);
  FASTAT_CHECK_POSITIVE(op, gamma_over_c);
  FASTAT_CHECK_POSITIVE(op, step_min);
  FASTAT_CHECK_POSITIVE(op, step_max);
  FASTAT_CHECK_VALUE(op, step_min <= step_max, step_min, "(", step_min, ") must be <= 'step_max' (", step_max, ")");
}

inline void check_pgi_step(const at::Tensor& delta_buf, const at::Tensor& mom_buf, const at::Tensor& index,
                           const at::Tensor& offsets, const at::Tensor& flips, const at::Tensor& grad,
                           const at::Tensor& grad_l1, const at::Tensor& x_adv, const at::Tensor& x, double eps,
                           double decay) {
  const char* op = "pgi_step";
  detail::check_atas_common(op, delta_buf, index, offsets, flips, x);
  detail::check_step_inputs(op, grad, x_adv, x);
  detail::check_float(op, "mom_buf", mom_buf);
  detail::check_ndim(op, "mom_buf", mom_buf, 4);
  // One dtype for both buffers: the kernels are instantiated per buffer dtype, not per pair.
  TORCH_CHECK_TYPE(mom_buf.scalar_type() == delta_buf.scalar_type(), "fastat.", op, ": arguments 'mom_buf' (",
                   mom_buf.scalar_type(), ") and 'delta_buf' (", delta_buf.scalar_type(), ") must have the same dtype");
  FASTAT_CHECK_SAME_SHAPE(op, mom_buf, delta_buf);
  FASTAT_CHECK_VALUE(op, mom_buf.is_contiguous(), mom_buf, "must be contiguous (it is indexed, and written in place)");
  detail::check_float(op, "grad_l1", grad_l1, 0);
  detail::check_ndim(op, "grad_l1", grad_l1, 0);
  FASTAT_CHECK_SAME_DEVICE(op, mom_buf, x);
  FASTAT_CHECK_SAME_DEVICE(op, grad_l1, x);
  FASTAT_CHECK_POSITIVE(op, eps);
  FASTAT_CHECK_VALUE(op, decay >= 0.0 && decay <= 1.0, decay, "must be in [0.0, 1.0], got ", decay);  // rejects NaN
}

inline void check_uniform_init(const at::Tensor& x, double eps) {
  detail::check_float("uniform_init", "x", x, 0);
  FASTAT_CHECK_POSITIVE("uniform_init", eps);
}

// Elementwise, any shape (0-D and empty included); alpha a 0-dim float tensor on x's device (its value is not read).
inline void check_sora_step(const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x,
                            const at::Tensor& alpha) {
  const char* op = "sora_step";
  detail::check_float(op, "delta", delta, 0);
  detail::check_float(op, "grad", grad, 0);
  detail::check_float(op, "x", x, 0);
  FASTAT_CHECK_SAME_SHAPE(op, grad, delta);
  FASTAT_CHECK_SAME_SHAPE(op, x, delta);
  TORCH_CHECK_TYPE(x.scalar_type() == delta.scalar_type(), "fastat.", op, ": arguments 'x' (", x.scalar_type(),
                   ") and 'delta' (", delta.scalar_type(), ") must have the same dtype");
  detail::check_float(op, "alpha", alpha, 0);
  detail::check_ndim(op, "alpha", alpha, 0);
  FASTAT_CHECK_SAME_DEVICE(op, delta, x);
  FASTAT_CHECK_SAME_DEVICE(op, grad, x);
  FASTAT_CHECK_SAME_DEVICE(op, alpha, x);
}

}  // namespace fastat
