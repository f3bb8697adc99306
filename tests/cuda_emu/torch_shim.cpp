// What csrc/cuda/bindings.cpp needs from torch's CUDA half, on the CPU, for the emulator (tests/cuda_emu/emulator.py
// builds bindings.cpp against the stand-in headers of include/c10/cuda and include/ATen/cuda and this file):
//
// - CUDAGeneratorImpl::philox_cuda_state and the default generator (see include/ATen/cuda/CUDAGeneratorImpl.h);
// - a guarded CPU allocator, armed around each emulated op call: every block it hands out is filled with 0xFF bytes
//   (NaN as any float dtype, so elements a kernel leaves unwritten show up) and sits between two 64-byte guards;
//   emu_guards_check() reports a changed guard (a write outside the tensor) in any block still alive, and a block's
//   guards are checked again when it is freed. This is what the device-side allocations of the binding (outputs,
//   contiguous copies, the ATAS workspace) are on a GPU: separate buffers the kernels must stay inside.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

// ------------------------------------------------------------------------------------------------------ generator
namespace at {

PhiloxCudaState CUDAGeneratorImpl::philox_cuda_state(uint64_t increment) {
  // `this` is a CPU generator (see the header); the binding holds its mutex_, as ATen's kernels do.
  auto* cpu = dynamic_cast<CPUGeneratorImpl*>(static_cast<c10::GeneratorImpl*>(this));
  TORCH_CHECK(cpu != nullptr, "emulator: uniform_init needs a CPU generator");
  const uint64_t offset = cpu->random64() / 4 * 4;  // one draw: the generator advances, a re-seed reproduces
  (void)increment;
  return PhiloxCudaState(cpu->current_seed(), offset);
}

namespace cuda::detail {
const Generator& getDefaultCUDAGenerator(c10::DeviceIndex /*device_index*/) {
  return at::detail::getDefaultCPUGenerator();
}
}  // namespace cuda::detail

}  // namespace at

// --------------------------------------------------------------------------------------------- guarded allocator
namespace {

constexpr size_t kGuard = 64;  // bytes on each side; also the payload's alignment, as c10's CPU allocator gives
constexpr unsigned char kGuardByte = 0xA5;
constexpr unsigned char kFillByte = 0xFF;

bool guards_intact(const unsigned char* data, size_t size) {
  for (size_t i = 0; i < kGuard; ++i) {
    if (data[-1 - static_cast<std::ptrdiff_t>(i)] != kGuardByte || data[size + i] != kGuardByte) return false;
  }
  return true;
}

std::string describe(size_t size, const char* when) {
  return "a kernel wrote outside a " + std::to_string(size) + "-byte tensor" + when + " (guard bytes changed)";
}

// The data pointer is its own context (torch's raw_allocate() requires it); sizes live in a table.
class GuardedAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const size_t total = (2 * kGuard + n + kGuard - 1) / kGuard * kGuard;
    auto* base = static_cast<unsigned char*>(std::aligned_alloc(kGuard, total));
    TORCH_CHECK(base != nullptr, "emulator: out of memory allocating ", n, " bytes");
    std::memset(base, kGuardByte, total);
    unsigned char* data = base + kGuard;
    std::memset(data, kFillByte, n);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_[data] = n;
    }
    return {data, data, &GuardedAllocator::release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &GuardedAllocator::release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // The first changed guard among the live blocks ("" if none), after what blocks freed since the last call showed.
  std::string check() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string msg;
    msg.swap(freed_failure_);
    for (const auto& [data, size] : live_) {
      if (msg.empty() && !guards_intact(data, size)) msg = describe(size, "");
    }
    return msg;
  }

  static GuardedAllocator& instance() {
    static GuardedAllocator allocator;
    return allocator;
  }

 private:
  static void release(void* ptr) {
    auto* data = static_cast<unsigned char*>(ptr);
    GuardedAllocator& self = instance();
    {
      std::lock_guard<std::mutex> lock(self.mutex_);
      auto it = self.live_.find(data);
      if (it == self.live_.end()) {  // never: the deleter only comes with this allocator's blocks
        if (self.freed_failure_.empty()) self.freed_failure_ = "the guarded allocator was asked to free a stranger";
        return;
      }
      if (self.freed_failure_.empty() && !guards_intact(data, it->second))
        self.freed_failure_ = describe(it->second, " (seen when it was freed)");
      self.live_.erase(it);
    }
    std::free(data - kGuard);
  }

  std::mutex mutex_;
  std::unordered_map<const unsigned char*, size_t> live_;
  std::string freed_failure_;
};

c10::Allocator* g_previous = nullptr;

}  // namespace

extern "C" {

// on != 0: CPU tensors are allocated by the guarded allocator from now on; 0: by the allocator before. Returns 0, or
// -1 if torch refused the switch (an allocator of higher priority is installed).
int emu_guards_arm(int on) {
  if (on) {
    if (g_previous == nullptr) g_previous = c10::GetCPUAllocator();
    c10::SetCPUAllocator(&GuardedAllocator::instance());
    return c10::GetCPUAllocator() == &GuardedAllocator::instance() ? 0 : -1;
  }
  if (g_previous != nullptr) c10::SetCPUAllocator(g_previous);
  return 0;
}

// Copies the first guard violation seen since the last call into buf (truncated, NUL-terminated); returns its
// length, 0 if none.
int emu_guards_check(char* buf, int size) {
  const std::string msg = GuardedAllocator::instance().check();
  if (size > 0) {
    std::snprintf(buf, static_cast<size_t>(size), "%s", msg.c_str());
  }
  return static_cast<int>(msg.size());
}

}  // extern "C"
