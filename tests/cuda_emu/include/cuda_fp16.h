// Emulator stand-in for cuda_fp16.h: storage type and the round-to-nearest-even conversions fastat's kernels use.
#pragma once
#include <bit>
#include <cstdint>

struct alignas(2) __half {
  uint16_t __x;
};

inline float __half2float(__half h) { return static_cast<float>(std::bit_cast<_Float16>(h.__x)); }
inline __half __float2half_rn(float v) {
  __half h;
  h.__x = std::bit_cast<uint16_t>(static_cast<_Float16>(v));  // IEEE round to nearest even (libgcc's __truncsfhf2)
  return h;
}
inline __half __float2half(float v) { return __float2half_rn(v); }
