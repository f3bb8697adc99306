// Philox4x32-10 (Salmon et al., SC'11; Random123, also curand's and torch's CUDA generator) and the counter scheme of
// fastat's random kernels (uniform_init.cu, sora_step.cu). Torch-free (CUDA runtime headers only).
//
// One call draws from the generator state (seed, offset) that its binding reserved from torch's CUDA generator under
// the generator's lock (PhiloxArgs, launchers.h). Element e takes 32-bit word e % 4 of the Philox block at counter
// (offset / 4, e / 4) under key = seed: each element's value depends only on the generator state and e, not on the
// launch configuration, and every subsequence e / 4 consumes 4 words, hence each op's offset increment of 4. Under
// CUDA-graph capture seed and offset are read on the device (torch's graph-safe RNG protocol), so replays draw anew.
// The Python model of this stream, checked against Random123's known answers, is tests/gpu/_philox.py.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "launchers.h"

namespace fastat {
namespace cuda {

__device__ __forceinline__ uint4 philox4x32_10(uint4 ctr, uint2 key) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;    // round multipliers
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;  // key schedule increments
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key.x += kWeyl0;
      key.y += kWeyl1;
    }
    const uint32_t hi0 = __umulhi(kMul0, ctr.x), lo0 = kMul0 * ctr.x;
    const uint32_t hi1 = __umulhi(kMul1, ctr.z), lo1 = kMul1 * ctr.z;
    ctr = make_uint4(hi1 ^ ctr.y ^ key.x, lo1, hi0 ^ ctr.w ^ key.y, lo0);
  }
  return ctr;
}

// The key and the first counter word of one call: from PhiloxArgs' values, or read on the device under capture.
struct PhiloxStream {
  uint2 key;
  uint64_t block;  // offset / 4
};

__device__ __forceinline__ PhiloxStream philox_stream(const PhiloxArgs& philox) {
  const uint64_t seed = philox.captured ? static_cast<uint64_t>(*philox.seed_ptr) : philox.seed;
  const uint64_t offset =
      philox.captured ? static_cast<uint64_t>(*philox.offset_ptr) + philox.offset_intragraph : philox.offset;
  return PhiloxStream{make_uint2(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)), offset / 4};
}

// The 4 words of elements 4j .. 4j + 3.
__device__ __forceinline__ uint4 philox_group(const PhiloxStream& s, uint64_t j) {
  return philox4x32_10(make_uint4(static_cast<uint32_t>(s.block), static_cast<uint32_t>(s.block >> 32),
                                  static_cast<uint32_t>(j), static_cast<uint32_t>(j >> 32)),
                       s.key);
}

// The top 24 bits of a word as u in [0, 1 - 2^-24], exactly (an integer below 2^24 times a power of two).
__device__ __forceinline__ float uniform01(uint32_t bits) {
  return static_cast<float>(bits >> 8) * 5.9604644775390625e-8f;  // 2^-24
}

}  // namespace cuda
}  // namespace fastat
