// Shared helpers for the torch-aware C++ (CPU kernels and the CUDA bindings). Never include from csrc/cuda/*.cu.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

#include <cstdint>
#include <string>

#include "quantile_rank.h"

// The torch.quantile rank rule the kernels were built with must be the one of the torch they are built against.
#if (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 14)) != FASTAT_QUANTILE_RANK64
#error "FASTAT_QUANTILE_RANK64 must be 1 exactly when building against torch >= 2.14 (setup.py sets it)"
#endif

// Checks that name the op and the argument. VALUE -> Python ValueError, TYPE -> Python TypeError.
#define FASTAT_CHECK_VALUE(op, cond, arg, ...) \
  TORCH_CHECK_VALUE(cond, "fastat.", op, ": argument '", #arg, "' ", __VA_ARGS__)
#define FASTAT_CHECK_TYPE(op, cond, arg, ...) \
  TORCH_CHECK_TYPE(cond, "fastat.", op, ": argument '", #arg, "' ", __VA_ARGS__)

#define FASTAT_CHECK_FLOAT(op, t)                                                                                     \
  FASTAT_CHECK_TYPE(op,                                                                                               \
                    (t).scalar_type() == at::kFloat || (t).scalar_type() == at::kBFloat16 ||                          \
                        (t).scalar_type() == at::kHalf,                                                               \
                    t, "must have dtype float32, bfloat16 or float16, got ", (t).scalar_type())
#define FASTAT_CHECK_DTYPE(op, t, dtype) \
  FASTAT_CHECK_TYPE(op, (t).scalar_type() == (dtype), t, "must have dtype ", (dtype), ", got ", (t).scalar_type())
#define FASTAT_CHECK_SAME_SHAPE(op, a, b) \
  FASTAT_CHECK_VALUE(op, (a).sizes() == (b).sizes(), a, "has shape ", (a).sizes(), " but '", #b, "' has ", (b).sizes())
#define FASTAT_CHECK_SAME_DEVICE(op, a, b) \
  FASTAT_CHECK_VALUE(op, (a).device() == (b).device(), a, "is on ", (a).device(), " but '", #b, "' is on ", (b).device())
#define FASTAT_CHECK_POSITIVE(op, v) \
  FASTAT_CHECK_VALUE(op, (v) > 0 && std::isfinite(v), v, "must be a finite number > 0, got ", (v))
#define FASTAT_CHECK_CONTIGUOUS(op, t) FASTAT_CHECK_VALUE(op, (t).is_contiguous(), t, "must be contiguous")

// Dispatch over the three float dtypes fastat accepts (fp32, bf16, fp16), binding `scalar_t`.
#define FASTAT_DISPATCH_FLOAT(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, name, __VA_ARGS__)

namespace fastat {

// Number of elements per sample (row) of a (B, ...) tensor; 0 when B == 0.
inline int64_t row_numel(const at::Tensor& t) { return t.size(0) == 0 ? 0 : t.numel() / t.size(0); }

// Memory format to process per-row tensors in: channels_last inputs stay channels_last (no copy); anything else is
// made contiguous. Within a row the element order does not matter to the per-row ops, only that all operands agree.
inline at::MemoryFormat row_format(const at::Tensor& t) {
  if (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous())
    return at::MemoryFormat::ChannelsLast;
  return at::MemoryFormat::Contiguous;
}

// The result `out` = at::empty_like(ref) (what the fake returns) and `work`, a buffer of the same shape contiguous in
// `fmt` into which a kernel writes raw rows: `out` itself unless ref has an unusual (dense but permuted) layout, in
// which case finish() copies work into out. Shared by the CPU kernels and the CUDA binding.
struct RowOutput {
  at::Tensor out, work;
  RowOutput(const at::Tensor& ref, at::MemoryFormat fmt)
      : out(at::empty_like(ref)), work(out.is_contiguous(fmt) ? out : at::empty_like(ref, fmt)) {}
  at::Tensor finish() {
    if (!work.is_same(out)) out.copy_(work);
    return out;
  }
};

}  // namespace fastat
