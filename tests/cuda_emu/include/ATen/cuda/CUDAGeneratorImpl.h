// Emulator stand-in for ATen/cuda/CUDAGeneratorImpl.h (tests/cuda_emu/torch_shim.cpp). The emulated ops run on CPU
// tensors, so their generators are CPU generators: at::get_generator_or_default<CUDAGeneratorImpl> accepts those
// (device_type() is CPU) and views them through this class, which adds no state and no virtual functions. A CUDA
// generator hands out Philox offsets 0, 4, 8, ... after a seed; this one takes the offset from one 64-bit draw of the
// CPU generator's engine instead, so that, as on a GPU, each call advances the generator, re-seeding reproduces the
// draws, and other draws from the same generator change what follows. Not emulated: the offsets themselves (so a
// wrong increment passed by the binding goes unseen), graph capture, and the check that the generator is a CUDA one.
// Viewing a CPUGeneratorImpl through this class is formally undefined behaviour (Generator::get<T> static_casts it);
// it works because the class adds no state and no virtual functions: never build this with -fsanitize=vptr.
#pragma once
#include <ATen/core/Generator.h>
#include <ATen/cuda/PhiloxCudaState.h>
#include <c10/core/GeneratorImpl.h>

#include <cstdint>

namespace at {

struct CUDAGeneratorImpl : c10::GeneratorImpl {
  static c10::DeviceType device_type() { return c10::DeviceType::CPU; }
  PhiloxCudaState philox_cuda_state(uint64_t increment);  // defined in tests/cuda_emu/torch_shim.cpp
};

namespace cuda::detail {
const Generator& getDefaultCUDAGenerator(c10::DeviceIndex device_index = -1);
}  // namespace cuda::detail

}  // namespace at
