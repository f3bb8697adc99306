// Shared helpers for the torch-aware C++ (CPU kernels and the CUDA bindings). Never include from csrc/cuda/*.cu.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>

#include "quantile_rank.h"

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

// Which of torch.quantile's two rank rules (quantile_rank.h) the torch this library runs in follows, asked of that
// torch once, at the first ZeroGrad call, rather than derived from a version number: the median-free row below has
// rank (float)0.3 · 1000 = 300.0000119 in fp64, which fp32 rounds to 300.0, so torch.quantile returns about 11.9
// (w = 1.19e-5 of the 1e6 step at index 301) under the fp64 rule and exactly 0 under the fp32 one. The Python side
// asks the same question the same way (fastat.ops.reference.QUANTILE_RANK_FP64).
inline bool torch_quantile_rank_fp64() {
  static const bool fp64 = [] {
    c10::InferenceMode guard;
    at::Tensor row = at::zeros({1001}, at::TensorOptions().dtype(at::kFloat));
    row.narrow(0, 301, 700).fill_(1e6);
    return at::quantile(row, 0.3).item<float>() > 1.0f;
  }();
  return fp64;
}

// torch.quantile's (lo, hi, w) for a row of n values at q, by the rule of the torch this library runs in.
inline QuantileRank torch_quantile_rank(double q, int64_t n) { return quantile_rank(q, n, torch_quantile_rank_fp64()); }

}  // namespace fastat
