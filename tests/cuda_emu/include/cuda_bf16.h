// Emulator stand-in for cuda_bf16.h: storage type and the round-to-nearest-even conversions fastat's kernels use.
#pragma once
#include <bit>
#include <cstdint>

struct alignas(2) __nv_bfloat16 {
  uint16_t __x;
};

inline float __bfloat162float(__nv_bfloat16 h) { return std::bit_cast<float>(static_cast<uint32_t>(h.__x) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  const uint32_t u = std::bit_cast<uint32_t>(v);
  __nv_bfloat16 h;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    h.__x = static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN stays NaN (quiet), sign kept
  } else {
    h.__x = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  // round to nearest even
  }
  return h;
}
inline __nv_bfloat16 __float2bfloat16(float v) { return __float2bfloat16_rn(v); }
