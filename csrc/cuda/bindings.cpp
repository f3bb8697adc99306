// The CUDA kernels of fastat::<op>: thin at::Tensor -> launcher adaptors (csrc/cuda/launchers.h) registered with
// TORCH_LIBRARY_IMPL(fastat, CUDA, m). Each adaptor checks the arguments' metadata (checks.h, the same rules as the CPU
// kernels and the Python layer), makes the operands agree on one memory layout, allocates the output exactly as the
// fake does (at::empty_like), and launches on the current stream of the operands' device. Nothing here reads tensor
// values or synchronizes: index/offset values are not checked on CUDA (the kernels clamp them into range instead; the
// Python layer checks them under FASTAT_DEBUG=1), so every op can be captured in a CUDA graph.
//
// Layouts: per-row ops (zerograd, multigrad, pgd) run in the memory format of delta (x for multigrad): channels_last
// stays channels_last without copies when all operands share it. ATAS ops need NCHW-contiguous x/grad/x_adv (others are
// copied) and a contiguous delta_buf/v_buf (checked: they are written in place).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <mutex>
#include <optional>

#include "checks.h"
#include "common.h"
#include "launchers.h"

namespace fastat {
namespace {

using cuda::DType;

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kBFloat16:
      return DType::kBFloat16;
    case at::kHalf:
      return DType::kFloat16;
    default:
      TORCH_CHECK_TYPE(false, "fastat: CUDA kernels take float32, bfloat16 or float16 tensors, got ", t.scalar_type());
  }
  return DType::kFloat32;  // unreachable
}

// The other tensor arguments are checked to be on the same device as this one (checks.h).
void check_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.is_cuda(), "fastat.", op, ": argument '", name, "' must be a CUDA tensor, got device ",
                    t.device());
}

void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "fastat.", op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

cuda::AtasShape atas_shape(const at::Tensor& x, const at::Tensor& delta_buf) {
  cuda::AtasShape s;
  s.batch = x.size(0);
  s.channels = x.size(1);
  s.height = x.size(2);
  s.width = x.size(3);
  s.num_examples = delta_buf.size(0);
  s.buf_height = delta_buf.size(2);
  s.buf_width = delta_buf.size(3);
  return s;
}

// The random ops' Philox state: `increment` offsets of the generator (default: that of `device`) reserved for this
// call, the same protocol as ATen's random kernels (under the generator's lock). Under graph capture the state refers
// to the device-side seed/offset that each replay advances.
cuda::PhiloxArgs reserve_philox(const std::optional<at::Generator>& generator, const c10::Device& device,
                                uint64_t increment) {
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator(device.index()));
  at::PhiloxCudaState state;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    state = gen->philox_cuda_state(increment);
  }
  cuda::PhiloxArgs philox;
  if (state.captured_) {
    philox.captured = true;
    philox.seed_ptr = state.seed_.ptr;
    philox.offset_ptr = state.offset_.ptr;
    philox.offset_intragraph = static_cast<uint64_t>(state.offset_intragraph_);
  } else {
    philox.seed = state.seed_.val;
    philox.offset = state.offset_.val;
  }
  return philox;
}

}  // namespace

at::Tensor zerograd_step_cuda(const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x, double eps,
                              double alpha, double q) {
  const char* op = "zerograd_step";
  check_zerograd_step(delta, grad, x, eps, alpha, q);
  check_cuda(op, "delta", delta);
  const c10::cuda::CUDAGuard device_guard(delta.device());
  const auto fmt = row_format(delta);
  const at::Tensor d = delta.contiguous(fmt), g = grad.contiguous(fmt), xc = x.contiguous(fmt);
  RowOutput res(delta, fmt);
  const QuantileRank rank = torch_quantile_rank(q, row_numel(d));  // decided by the running torch (../common.h)
  check_launch(op, cuda::launch_zerograd_step(d.const_data_ptr(), g.const_data_ptr(), xc.const_data_ptr(),
                                              res.work.data_ptr(), dtype_of(d), dtype_of(g), d.size(0), row_numel(d),
                                              static_cast<float>(eps), static_cast<float>(alpha), rank.lo, rank.hi,
                                              rank.w, current_stream()));
  return res.finish();
}

at::Tensor multigrad_step_cuda(const at::Tensor& grads, const at::Tensor& x, double eps, double alpha,
                               std::optional<int64_t> threshold) {
  const char* op = "multigrad_step";
  check_multigrad_step(grads, x, eps, alpha, threshold);
  check_cuda(op, "x", x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const auto fmt = row_format(x);
  // Each grads[s] must list a sample's elements in x's order: (S, B, H, W, C) in memory when x is channels_last.
  const at::Tensor g = fmt == at::MemoryFormat::ChannelsLast ? grads.permute({0, 1, 3, 4, 2}).contiguous()
                                                             : grads.contiguous();
  const at::Tensor xc = x.contiguous(fmt);
  RowOutput res(x, fmt);
  const int64_t starts = grads.size(0);
  const int64_t th = threshold.has_value() ? *threshold : starts;
  check_launch(op, cuda::launch_multigrad_step(g.const_data_ptr(), xc.const_data_ptr(), res.work.data_ptr(),
                                               dtype_of(xc), dtype_of(g), starts, xc.numel(), 2 * th - starts,
                                               static_cast<float>(eps), static_cast<float>(alpha), current_stream()));
  return res.finish();
}

at::Tensor atas_gather_cuda(const at::Tensor& delta_buf, const at::Tensor& index, const at::Tensor& offsets,
                            const at::Tensor& flips, const at::Tensor& x) {
  const char* op = "atas_gather";
  check_atas_gather(delta_buf, index, offsets, flips, x);
  check_cuda(op, "x", x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor xc = x.contiguous(), idx = index.contiguous(), off = offsets.contiguous(), fl = flips.contiguous();
  RowOutput res(x, at::MemoryFormat::Contiguous);
  check_launch(op, cuda::launch_atas_gather(delta_buf.const_data_ptr(), dtype_of(delta_buf),
                                            idx.const_data_ptr<int64_t>(), off.const_data_ptr<int64_t>(),
                                            fl.const_data_ptr<bool>(), xc.const_data_ptr(), res.work.data_ptr(),
                                            dtype_of(xc), atas_shape(xc, delta_buf), current_stream()));
  return res.finish();
}

// delta_buf and v_buf are mutated (Tensor(a!) in the schema): non-const references, the same C++ signature as the
// CPU kernel's (the dispatcher refuses, at load time, kernels of one op with different signatures).
at::Tensor atas_step_cuda(at::Tensor& delta_buf, at::Tensor& v_buf, const at::Tensor& index,
                          const at::Tensor& offsets, const at::Tensor& flips, const at::Tensor& grad,
                          const at::Tensor& x_adv, const at::Tensor& x, double eps, double c, double beta,
                          double gamma_over_c, double step_min, double step_max, bool warmup) {
  const char* op = "atas_step";
  check_atas_step(delta_buf, v_buf, index, offsets, flips, grad, x_adv, x, eps, c, beta, gamma_over_c, step_min,
                  step_max);
  check_cuda(op, "x", x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor g = grad.contiguous(), xa = x_adv.contiguous(), xc = x.contiguous();
  const at::Tensor idx = index.contiguous(), off = offsets.contiguous(), fl = flips.contiguous();
  RowOutput res(x_adv, at::MemoryFormat::Contiguous);
  cuda::AtasStepOperands operands;
  operands.delta_buf = delta_buf.data_ptr();
  operands.buf_dtype = dtype_of(delta_buf);
  operands.v_buf = v_buf.data_ptr<float>();
  operands.index = idx.const_data_ptr<int64_t>();
  operands.offsets = off.const_data_ptr<int64_t>();
  operands.flips = fl.const_data_ptr<bool>();
  operands.grad = g.const_data_ptr();
  operands.grad_dtype = dtype_of(g);
  operands.x_adv = xa.const_data_ptr();
  operands.x = xc.const_data_ptr();
  operands.out = res.work.data_ptr();
  operands.dtype = dtype_of(xc);
  const cuda::AtasShape shape = atas_shape(xc, delta_buf);
  cuda::AtasStepParams params;
  params.eps = static_cast<float>(eps);
  params.c = static_cast<float>(c);
  params.beta = static_cast<float>(beta);
  params.one_minus_beta = static_cast<float>(1.0 - beta);
  params.gamma_over_c = static_cast<float>(gamma_over_c);
  params.step_min = static_cast<float>(step_min);
  params.step_max = static_cast<float>(step_max);
  params.warmup = warmup;
  bool done = false;
  check_launch(op, cuda::launch_atas_step_fused(operands, shape, params, &done, current_stream()));
  if (!done) {  // the two-launch path, the only one with scratch (stream-ordered by the caching allocator)
    const int64_t ws_bytes = cuda::atas_step_split_workspace_bytes(shape.batch, row_numel(xc), warmup);
    const at::Tensor workspace = ws_bytes > 0 ? at::empty({ws_bytes}, xc.options().dtype(at::kByte)) : at::Tensor();
    void* scratch = ws_bytes > 0 ? workspace.data_ptr() : nullptr;
    check_launch(op, cuda::launch_atas_step_split(operands, shape, params, scratch, current_stream()));
  }
  return res.finish();
}

// delta_buf and mom_buf are mutated: non-const references, as in the CPU kernel.
at::Tensor pgi_step_cuda(at::Tensor& delta_buf, at::Tensor& mom_buf, const at::Tensor& index, const at::Tensor& offsets,
                         const at::Tensor& flips, const at::Tensor& grad, const at::Tensor& grad_l1,
                         const at::Tensor& x_adv, const at::Tensor& x, double eps, double decay) {
  const char* op = "pgi_step";
  check_pgi_step(delta_buf, mom_buf, index, offsets, flips, grad, grad_l1, x_adv, x, eps, decay);
  check_cuda(op, "x", x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor g = grad.contiguous(), xa = x_adv.contiguous(), xc = x.contiguous();
  const at::Tensor idx = index.contiguous(), off = offsets.contiguous(), fl = flips.contiguous();
  const at::Tensor l1 = grad_l1.to(at::kFloat);  // torch widens a 0-dim bf16/fp16 divisor to fp32 exactly, too
  RowOutput res(x_adv, at::MemoryFormat::Contiguous);
  cuda::PgiStepOperands operands;
  operands.delta_buf = delta_buf.data_ptr();
  operands.mom_buf = mom_buf.data_ptr();
  operands.buf_dtype = dtype_of(delta_buf);
  operands.index = idx.const_data_ptr<int64_t>();
  operands.offsets = off.const_data_ptr<int64_t>();
  operands.flips = fl.const_data_ptr<bool>();
  operands.grad = g.const_data_ptr();
  operands.grad_dtype = dtype_of(g);
  operands.grad_l1 = l1.const_data_ptr<float>();
  operands.x_adv = xa.const_data_ptr();
  operands.x = xc.const_data_ptr();
  operands.out = res.work.data_ptr();
  operands.dtype = dtype_of(xc);
  check_launch(op, cuda::launch_pgi_step(operands, atas_shape(xc, delta_buf), static_cast<float>(eps),
                                         static_cast<float>(decay), current_stream()));
  return res.finish();
}

at::Tensor pgd_step_cuda(const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x, double eps,
                         double alpha, const std::optional<at::Tensor>& active) {
  const char* op = "pgd_step";
  check_pgd_step(delta, grad, x, eps, alpha, active);
  check_cuda(op, "delta", delta);
  const c10::cuda::CUDAGuard device_guard(delta.device());
  const auto fmt = row_format(delta);
  const at::Tensor d = delta.contiguous(fmt), g = grad.contiguous(fmt), xc = x.contiguous(fmt);
  const bool has_active = active.has_value() && active->defined();
  const at::Tensor act = has_active ? active->contiguous() : at::Tensor();
  RowOutput res(delta, fmt);
  check_launch(op, cuda::launch_pgd_step(d.const_data_ptr(), g.const_data_ptr(), xc.const_data_ptr(),
                                         has_active ? act.const_data_ptr<bool>() : nullptr, res.work.data_ptr(),
                                         dtype_of(d), dtype_of(g), d.size(0), row_numel(d), static_cast<float>(eps),
                                         static_cast<float>(alpha), current_stream()));
  return res.finish();
}

at::Tensor uniform_init_cuda(const at::Tensor& x, double eps, std::optional<at::Generator> generator) {
  const char* op = "uniform_init";
  check_uniform_init(x, eps);
  check_cuda(op, "x", x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());  // contiguous, like the fake
  if (xc.numel() == 0) return out;
  const cuda::PhiloxArgs philox = reserve_philox(generator, x.device(), cuda::kUniformInitPhiloxIncrement);
  check_launch(op, cuda::launch_uniform_init(xc.const_data_ptr(), out.data_ptr(), dtype_of(xc), xc.numel(),
                                             static_cast<float>(eps), philox, current_stream()));
  return out;
}

at::Tensor sora_step_cuda(const at::Tensor& delta, const at::Tensor& grad, const at::Tensor& x,
                          const at::Tensor& alpha, std::optional<at::Generator> generator) {
  const char* op = "sora_step";
  check_sora_step(delta, grad, x, alpha);
  check_cuda(op, "x", x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  // u is drawn per element in logical (row-major) order, so every operand and the result are contiguous, like the fake.
  const at::Tensor d = delta.contiguous(), g = grad.contiguous(), xc = x.contiguous();
  const at::Tensor a = alpha.to(at::kFloat);  // a 0-dim bf16/fp16 α widens exactly, on the stream (no host read)
  at::Tensor out = at::empty(delta.sizes(), delta.options());
  if (d.numel() == 0) return out;
  const cuda::PhiloxArgs philox = reserve_philox(generator, x.device(), cuda::kSoraStepPhiloxIncrement);
  check_launch(op, cuda::launch_sora_step(d.const_data_ptr(), g.const_data_ptr(), xc.const_data_ptr(),
                                          a.const_data_ptr<float>(), out.data_ptr(), dtype_of(d), dtype_of(g),
                                          d.numel(), philox, current_stream()));
  return out;
}

}  // namespace fastat

TORCH_LIBRARY_IMPL(fastat, CUDA, m) {
  m.impl("zerograd_step", &fastat::zerograd_step_cuda);
  m.impl("multigrad_step", &fastat::multigrad_step_cuda);
  m.impl("atas_gather", &fastat::atas_gather_cuda);
  m.impl("atas_step", &fastat::atas_step_cuda);
  m.impl("pgi_step", &fastat::pgi_step_cuda);
  m.impl("pgd_step", &fastat::pgd_step_cuda);
  m.impl("uniform_init", &fastat::uniform_init_cuda);
  m.impl("sora_step", &fastat::sora_step_cuda);
}
