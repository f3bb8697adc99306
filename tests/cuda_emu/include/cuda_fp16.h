// Emulator stand-in for cuda_fp16.h: storage type and the round-to-nearest-even conversions fastat's kernels use.
#pragma once
#include <cstdint>
#include <cstring>

struct alignas(2) __half {
  uint16_t __x;
};

inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.__x, 2);
  return static_cast<float>(f);
}
inline __half __float2half_rn(float v) {
  const _Float16 f = static_cast<_Float16>(v);  // IEEE round to nearest even (libgcc's __truncsfhf2)
  __half h;
  std::memcpy(&h.__x, &f, 2);
  return h;
}
inline __half __float2half(float v) { return __float2half_rn(v); }
