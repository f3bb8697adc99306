// What csrc/cuda/bindings.cpp needs from torch's CUDA half, on the CPU, for the emulator (tests/cuda_emu/emulator.py
// builds bindings.cpp against the stand-in headers of include/c10/cuda and include/ATen/cuda and this file):
//
// - CUDAGeneratorImpl::philox_cuda_state and the default generator (see include/ATen/cuda/CUDAGeneratorImpl.h);
// - a guarded CPU allocator, armed around each emulated op call: every block it hands out is filled with 0xFF bytes
//   (NaN as any float dtype, so elements a kernel leaves unwritten show up) and sits between two 4 KB guards (NaN
//   too, so reads past a tensor give NaN); emu_guards_check() reports a changed guard (a write outside the tensor)
//   in any block still alive, and a block's guards are checked again when it is freed. This is what the device-side
//   allocations of the binding (outputs, contiguous copies, the ATAS workspace) are on a GPU: separate buffers the
//   kernels must stay inside.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

#if FASTAT_EMU_ASAN
#include <sanitizer/asan_interface.h>
#endif

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

// Each block: kGuard guard bytes, the tensor's n bytes (64-byte aligned, as c10's CPU allocator gives), kGuard guard
// bytes. Guard bytes hold the 16-bit pattern 0x7FFF at even addresses, NaN as fp32, bf16 and fp16, so a kernel that
// reads past a tensor reads NaN; new tensors are filled with 0xFF bytes (NaN too, and a different pattern).
// Under AddressSanitizer the guards are poisoned instead: ASan then reports any access to them where it happens.
constexpr size_t kGuard = 4096;
constexpr size_t kAlign = 64;
constexpr unsigned char kFillByte = 0xFF;

unsigned char guard_byte(const unsigned char* p) {
  return reinterpret_cast<uintptr_t>(p) % 2 == 0 ? 0xFF : 0x7F;
}

void fill_guard(unsigned char* p) {
  for (size_t i = 0; i < kGuard; ++i) p[i] = guard_byte(p + i);
}

bool guard_intact(const unsigned char* p) {
  for (size_t i = 0; i < kGuard; ++i) {
    if (p[i] != guard_byte(p + i)) return false;
  }
  return true;
}

std::string describe(size_t size, const char* when) {
  return "a kernel wrote outside a " + std::to_string(size) + "-byte tensor (guard bytes changed" + when + ")";
}

// The data pointer is its own context (torch's raw_allocate() requires it); sizes live in a table. Zero-byte
// tensors get a null pointer, as from CUDA's caching allocator.
class GuardedAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (n == 0) return {nullptr, nullptr, &GuardedAllocator::release, cpu};
    const size_t total = (2 * kGuard + n + kAlign - 1) / kAlign * kAlign;
    auto* base = static_cast<unsigned char*>(std::aligned_alloc(kAlign, total));
    TORCH_CHECK(base != nullptr, "emulator: out of memory allocating ", n, " bytes");
    unsigned char* data = base + kGuard;
    std::memset(data, kFillByte, n);
    fill_guard(base);
    fill_guard(data + n);
#if FASTAT_EMU_ASAN
    ASAN_POISON_MEMORY_REGION(base, kGuard);
    ASAN_POISON_MEMORY_REGION(data + n, kGuard);
#endif
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_[data] = n;
    }
    return {data, data, &GuardedAllocator::release, cpu};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &GuardedAllocator::release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // The first guard violation since the last call ("" if none): in a live block, or seen when one was freed. A
  // damaged live block's guards are restored once reported, so each violation is reported once.
  std::string check() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string msg;
    msg.swap(freed_failure_);
#if !FASTAT_EMU_ASAN
    for (const auto& [data, size] : live_) {
      unsigned char* d = const_cast<unsigned char*>(data);
      const bool before = guard_intact(d - kGuard), after = guard_intact(d + size);
      if (before && after) continue;
      if (msg.empty()) msg = describe(size, "");
      fill_guard(d - kGuard);
      fill_guard(d + size);
    }
#endif
    return msg;
  }

  static GuardedAllocator& instance() {
    static auto* allocator = new GuardedAllocator();  // never destroyed: tensors may outlive static destruction
    return *allocator;
  }

 private:
  static void release(void* ptr) {
    if (ptr == nullptr) return;
    auto* data = static_cast<unsigned char*>(ptr);
    GuardedAllocator& self = instance();
    size_t size = 0;
    {
      std::lock_guard<std::mutex> lock(self.mutex_);
      auto it = self.live_.find(data);
      if (it == self.live_.end()) {  // never: the deleter only comes with this allocator's blocks
        if (self.freed_failure_.empty()) self.freed_failure_ = "the guarded allocator was asked to free a stranger";
        return;
      }
      size = it->second;
      self.live_.erase(it);
#if !FASTAT_EMU_ASAN
      if (self.freed_failure_.empty() && !(guard_intact(data - kGuard) && guard_intact(data + size)))
        self.freed_failure_ = describe(size, ", seen when it was freed");
#endif
    }
#if FASTAT_EMU_ASAN
    ASAN_UNPOISON_MEMORY_REGION(data - kGuard, kGuard);
    ASAN_UNPOISON_MEMORY_REGION(data + size, kGuard);
#endif
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

// Copies the first guard violation not reported yet into buf (truncated, NUL-terminated); returns its length, 0 if
// none. Under AddressSanitizer, ASan itself reports them.
int emu_guards_check(char* buf, int size) {
  const std::string msg = GuardedAllocator::instance().check();
  if (size > 0) {
    std::snprintf(buf, static_cast<size_t>(size), "%s", msg.c_str());
  }
  return static_cast<int>(msg.size());
}

}  // extern "C"
