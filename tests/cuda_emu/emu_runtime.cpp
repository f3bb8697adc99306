// The emulator's scheduler and CUDA runtime stand-ins (see include/emu_cuda.h for the model).
#include <cxxabi.h>
#include <dlfcn.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "include/emu_cuda.h"

// Under AddressSanitizer: poisoned canaries, and the fiber switches announced to ASan so that it knows which stack
// is live (without it, ASan may report false stack errors after a swapcontext).
#if FASTAT_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define EMU_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#define EMU_START_SWITCH(save, bottom, size) __sanitizer_start_switch_fiber(save, bottom, size)
#define EMU_FINISH_SWITCH(save, bottom_old, size_old) __sanitizer_finish_switch_fiber(save, bottom_old, size_old)
#else
#define EMU_POISON(p, n) ((void)(p), (void)(n))
#define EMU_UNPOISON(p, n) ((void)(p), (void)(n))
#define EMU_START_SWITCH(save, bottom, size) ((void)(save), (void)(bottom), (void)(size))
#define EMU_FINISH_SWITCH(save, bottom_old, size_old) ((void)(save), (void)(bottom_old), (void)(size_old))
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace emu {
namespace {

// ------------------------------------------------------------------------------------------------------- settings
struct Settings {
  int sm_count = 132;
  int smem_per_block = 48 * 1024;    // default dynamic + static limit
  int smem_optin = 227 * 1024;       // cudaDevAttrMaxSharedMemoryPerBlockOptin
  bool cluster_launch = true;        // cudaDevAttrClusterLaunch
  int max_active_clusters = 1 << 20; // what cudaOccupancyMaxActiveClusters answers when a cluster fits
  int ptx_version = 0;               // cudaFuncGetAttributes' ptxVersion; 0: 90 with clusters, else 80
  bool refuse_cluster_launch = false;
  bool check_call_sites = true;
  uint64_t schedule_seed = 0;  // 0: threads resume in order 0, 1, ...; else a fresh random order every round
  size_t fiber_stack = 128 * 1024;
};
Settings g_settings;
std::mutex g_mutex;  // guards the maps and messages below
std::map<const void*, int> g_dynamic_smem_limit;  // per kernel: the opted-in limit
std::map<const void*, size_t> g_static_smem;       // per kernel: static shared memory seen in its launches so far
int g_device = 0;  // each emu_configure() is a new device, so the launchers' per-device caches ask again
cudaError_t g_last_error = cudaSuccess;            // cudaGetLastError's
std::string g_failure;                             // first kernel failure since the last emu_take_failure()
std::string g_log;                                 // launch log

void record_failure(const std::string& what) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_failure.empty()) g_failure = what;
}

void set_error(cudaError_t e) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_last_error == cudaSuccess) g_last_error = e;
}

// One step of xorshift64 (the schedule shuffles' generator).
uint64_t next_random(uint64_t& state) {
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  return state;
}

std::string format(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

// A call site as one comparable value: the file name's address (a literal, the same for every call from that file)
// and the line.
struct Site {
  const char* file = nullptr;
  unsigned line = 0;
  bool operator==(const Site& o) const { return file == o.file && line == o.line; }
  bool operator!=(const Site& o) const { return !(*this == o); }
};
Site site_of(const Where& at) { return Site{at.file_name(), static_cast<unsigned>(at.line())}; }
std::string describe(const Site& s) {
  if (s.file == nullptr) return "?";
  const char* slash = std::strrchr(s.file, '/');
  return format("%s:%u", slash ? slash + 1 : s.file, s.line);
}

// ------------------------------------------------------------------------------------------------------- clusters
// Barrier across the OS threads running the blocks of one cluster, which also keeps every block's shared memory
// (its thread's thread_locals) alive until all blocks of the cluster have finished.
struct Cluster {
  unsigned size = 1;
  std::mutex mutex;
  std::condition_variable cv;
  unsigned arrived = 0, finished = 0;
  uint64_t generation = 0;
  bool failed = false;
  std::vector<struct Block*> blocks;
};

// ------------------------------------------------------------------------------------------------------- a block
enum class Wait { kNone, kBarrier, kWarp, kDone };

struct Fiber {
  ucontext_t ctx;
  void* fake_stack = nullptr;  // ASan's bookkeeping across switches
  char* stack = nullptr;
  Wait wait = Wait::kNone;
};

// One warp collective in flight: the lanes of `mask` deposit their values (collect), then read them all (drain).
// Lanes of one warp may have several in flight at once (independent thread scheduling: lanes outside a collective's
// mask go on to the next one); a lane joins the open collective of the same kind, mask and call site.
struct Collective {
  unsigned mask = 0, arrived = 0, departed = 0;
  Site site;
  const char* what = nullptr;
  bool draining = false;
  uint64_t values[32] = {};
};

struct WarpState {
  std::list<Collective> pending;  // list: stable addresses while lanes wait on an element
};

struct Block {
  unsigned threads = 0, live = 0;
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_stack = nullptr;  // the OS thread's stack, as ASan reported it on the first switch
  size_t scheduler_stack_size = 0;
  int current = -1;
  uint64_t progress = 0;  // bumped by every arrival/departure/exit: a round of resumes without it is a deadlock
  // __syncthreads / cluster.sync (block part)
  unsigned bar_arrived = 0;
  uint64_t bar_generation = 0;
  Site bar_site;
  std::vector<WarpState> warps;
  // dynamic shared memory, with a canary tail
  std::vector<unsigned char> dyn;
  size_t dyn_bytes = 0;
  // static shared memory: the __shared__ variables the block's threads declared (address, bytes)
  std::vector<std::pair<char*, size_t>> shared;
  std::mutex shared_mutex;
  size_t static_bytes = 0;
  // cluster
  Cluster* cluster = nullptr;
  unsigned rank = 0;
  std::atomic<char*> tls_anchor{nullptr};
  std::atomic<bool> finished{false};
  // failure
  bool failed = false;
  std::string error;
  const void* fn = nullptr;
};

thread_local char tls_anchor_byte;  // same offset in every thread's TLS block as any __shared__ variable
thread_local Block* tl_block = nullptr;
constexpr unsigned char kCanary = 0xA5;
constexpr size_t kCanaryBytes = 4096;  // overruns beyond it corrupt the heap instead of being reported

Block& me() {
  if (tl_block == nullptr) {
    std::fprintf(stderr, "emu: device function called outside a kernel\n");
    std::abort();
  }
  return *tl_block;
}

std::string kernel_name(const void* fn);

// Switches back to the scheduler; returns when this fiber is resumed.
void yield() {
  Block& b = me();
  Fiber& f = b.fibers[b.current];
  EMU_START_SWITCH(&f.fake_stack, b.scheduler_stack, b.scheduler_stack_size);
  swapcontext(&f.ctx, &b.scheduler);
  EMU_FINISH_SWITCH(f.fake_stack, nullptr, nullptr);
}

// "kernel<...>: block (x,y,z)", the start of every failure message (blockIdx: the block on this OS thread).
std::string block_label(const Block& b) {
  return format("%s: block (%u,%u,%u)", kernel_name(b.fn).c_str(), blockIdx.x, blockIdx.y, blockIdx.z);
}

[[noreturn]] void fail_here(const std::string& why) {
  Block& b = me();
  if (!b.failed) {
    b.failed = true;
    b.error = block_label(b) + format(" thread %u: ", threadIdx.x) + why;
  }
  for (;;) yield();  // the scheduler never resumes a failed block's fibers
}

template <typename Pred>
void wait_until(Wait kind, Pred pred) {
  Block& b = me();
  Fiber& f = b.fibers[b.current];
  while (!pred()) {
    f.wait = kind;
    yield();
  }
  f.wait = Wait::kNone;
}

void fiber_main(unsigned lo, unsigned hi) {
  {
    Block& b = me();
    EMU_FINISH_SWITCH(nullptr, &b.scheduler_stack, &b.scheduler_stack_size);
  }
  const auto* body = reinterpret_cast<const std::function<void()>*>(static_cast<uintptr_t>(hi) << 32 | lo);
  (*body)();
  Block& b = me();
  if (b.bar_arrived > 0)
    fail_here(format("exited while %u threads of the block wait at the barrier at %s (a barrier some threads skip)",
                     b.bar_arrived, describe(b.bar_site).c_str()));
  b.fibers[b.current].wait = Wait::kDone;
  --b.live;
  ++b.progress;
  yield();  // never resumed
}

// Stacks are reused across blocks and launches (per OS thread), with a guard page below each.
struct StackPool {
  std::vector<char*> free;
  size_t bytes = 0;
  ~StackPool() {
    for (char* s : free) munmap(s - getpagesize(), bytes + getpagesize());
  }
  char* get(size_t want) {
    if (want != bytes) {
      for (char* s : free) munmap(s - getpagesize(), bytes + getpagesize());
      free.clear();
      bytes = want;
    }
    if (!free.empty()) {
      char* s = free.back();
      free.pop_back();
      return s;
    }
    const size_t page = getpagesize();
    void* m = mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
      std::perror("emu: mmap");
      std::abort();
    }
    mprotect(m, page, PROT_NONE);
    return static_cast<char*>(m) + page;
  }
  void put(char* s) { free.push_back(s); }
};
thread_local StackPool tl_stacks;

// Runs one block to completion (or failure) on this OS thread.
void run_block(Block& b, const dim3& block_idx, const dim3& grid, const dim3& block_dim,
               const std::function<void()>& body) {
  tl_block = &b;
  b.tls_anchor = &tls_anchor_byte;
  blockIdx = uint3{block_idx.x, block_idx.y, block_idx.z};
  gridDim = grid;
  blockDim = block_dim;
  b.threads = block_dim.x * block_dim.y * block_dim.z;
  b.live = b.threads;
  b.warps.assign((b.threads + 31) / 32, WarpState{});
  {
    std::lock_guard<std::mutex> lock(b.shared_mutex);
    b.shared.clear();
  }
  b.static_bytes = 0;
  b.fibers.assign(b.threads, Fiber{});
  std::memset(b.dyn.data() + b.dyn_bytes, kCanary, kCanaryBytes);
  EMU_POISON(b.dyn.data() + b.dyn_bytes, kCanaryBytes);  // under ASan, any access past the end is reported
  const uintptr_t body_bits = reinterpret_cast<uintptr_t>(&body);
  for (unsigned t = 0; t < b.threads; ++t) {
    Fiber& f = b.fibers[t];
    f.stack = tl_stacks.get(g_settings.fiber_stack);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = g_settings.fiber_stack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, reinterpret_cast<void (*)()>(fiber_main), 2, static_cast<unsigned>(body_bits & 0xffffffffu),
                static_cast<unsigned>(body_bits >> 32));
  }
  uint64_t seen = ~uint64_t{0};
  // The order in which threads run between two synchronisation points. A kernel that needs a barrier it lacks reads
  // stale or future values under one order or another, so the tests run with several.
  std::vector<unsigned> order(b.threads);
  for (unsigned t = 0; t < b.threads; ++t) order[t] = t;
  uint64_t rng = g_settings.schedule_seed * 0x9E3779B97F4A7C15ull + (block_idx.x + 1) * 0xBF58476D1CE4E5B9ull;
  uint64_t round = 0;
  while (b.live > 0 && !b.failed) {
    if (g_settings.schedule_seed != 0) {
      for (unsigned i = b.threads; i > 1; --i) std::swap(order[i - 1], order[next_random(rng) % i]);  // Fisher-Yates
    }
    // Shuffled schedules also resume only a random half of the threads every other round, so that some warps get
    // ahead of others past warp collectives (a missing __syncthreads before a phase that starts with a shuffle or
    // ballot then shows); the deadlock check only counts full rounds.
    const bool partial = g_settings.schedule_seed != 0 && (++round & 1) != 0;
    bool all_waiting = true;
    for (unsigned k = 0; k < b.threads && !b.failed; ++k) {
      const unsigned t = order[k];
      Fiber& f = b.fibers[t];
      if (f.wait == Wait::kDone) continue;
      if (partial && (next_random(rng) & 1)) continue;
      b.current = static_cast<int>(t);
      threadIdx = uint3{t % block_dim.x, (t / block_dim.x) % block_dim.y, t / (block_dim.x * block_dim.y)};
      EMU_START_SWITCH(&b.scheduler_fake_stack, f.stack, g_settings.fiber_stack);
      swapcontext(&b.scheduler, &f.ctx);
      EMU_FINISH_SWITCH(b.scheduler_fake_stack, nullptr, nullptr);
      if (f.wait == Wait::kNone || f.wait == Wait::kDone) all_waiting = false;
    }
    if (b.failed || b.live == 0) break;
    if (partial) continue;
    if (all_waiting && b.progress == seen) {
      unsigned at_barrier = 0, at_warp = 0;
      for (const Fiber& f : b.fibers) {
        at_barrier += f.wait == Wait::kBarrier;
        at_warp += f.wait == Wait::kWarp;
      }
      std::string open;
      for (size_t wi = 0; wi < b.warps.size() && open.size() < 600; ++wi)
        for (const Collective& c : b.warps[wi].pending)
          open += format("; warp %zu: %s at %s, mask 0x%08x, has lanes 0x%08x", wi, c.what,
                         describe(c.site).c_str(), c.mask, c.arrived);
      b.failed = true;
      b.error = block_label(b) + format(": deadlock: %u threads wait at a barrier, %u in a warp collective, %u have "
                                        "exited (a barrier or collective some threads never reach)",
                                        at_barrier, at_warp, b.threads - b.live) +
                open;
      break;
    }
    seen = b.progress;
  }
  for (Fiber& f : b.fibers) tl_stacks.put(f.stack);
  b.fibers.clear();
  EMU_UNPOISON(b.dyn.data() + b.dyn_bytes, kCanaryBytes);
  if (!b.failed && b.dyn_bytes > 0) {
    for (size_t i = 0; i < kCanaryBytes; ++i) {
      if (b.dyn[b.dyn_bytes + i] != kCanary) {
        b.failed = true;
        b.error = block_label(b) + format(" wrote past the end of its %zu bytes of dynamic shared memory", b.dyn_bytes);
        break;
      }
    }
  }
  tl_block = nullptr;
}

// The kernel's name without its parameter list, from the symbol table (build.py keeps the kernels' symbols visible).
std::string kernel_name(const void* fn) {
  Dl_info info;
  if (dladdr(fn, &info) == 0 || info.dli_sname == nullptr) return format("kernel@%p", fn);
  int status = 0;
  char* demangled = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
  std::string name = status == 0 && demangled != nullptr ? demangled : info.dli_sname;
  std::free(demangled);
  // "void ns::kernel<...>(params)" -> "kernel<...>"
  if (name.rfind("void ", 0) == 0) name = name.substr(5);
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < name.size(); ++i) {
    const char ch = name[i];
    if (ch == '<') ++depth;
    if (ch == '>') --depth;
    if (depth == 0 && ch == ':' && i + 1 < name.size() && name[i + 1] == ':') start = i + 2;
    if (depth == 0 && ch == '(') return name.substr(start, i - start);
  }
  return name.substr(start);
}

}  // namespace

// --------------------------------------------------------------------------------------------- device-side entries
unsigned lane_id() { return threadIdx.x & 31u; }  // 1-D blocks (checked at launch)

namespace {

// The other blocks' part of cluster.sync(), done by the last thread of block b to arrive: an OS-level barrier across
// the cluster's threads.
void cluster_arrive(Cluster& c) {
  std::unique_lock<std::mutex> lock(c.mutex);
  const uint64_t cgen = c.generation;
  if (++c.arrived == c.size) {
    c.arrived = 0;
    ++c.generation;
    c.cv.notify_all();
    return;
  }
  const bool ok = c.cv.wait_for(lock, std::chrono::minutes(30), [&] {
    return c.generation != cgen || c.failed || c.arrived + c.finished >= c.size;
  });
  if (c.generation == cgen) {
    c.failed = true;
    c.cv.notify_all();
    lock.unlock();
    fail_here(ok ? "cluster.sync(): another block of the cluster failed or exited without reaching it"
                 : "cluster.sync(): timed out waiting for the other blocks of the cluster");
  }
}

// __syncthreads() (cluster = nullptr) and cluster.sync(): every thread of the block arrives, from the same place; the
// last to arrive (after the cluster's other blocks, for cluster.sync) releases the others.
void block_barrier(const Where& at, const char* what, Cluster* cluster) {
  const Site site = site_of(at);
  Block& b = me();
  if (b.live != b.threads)
    fail_here(format("%s at %s after %u threads of the block exited (a barrier some threads skip)", what,
                     describe(site).c_str(), b.threads - b.live));
  if (b.bar_arrived == 0) {
    b.bar_site = site;
  } else if (g_settings.check_call_sites && site != b.bar_site) {
    fail_here(format("%s at %s while other threads of the block wait at %s (divergent barrier)", what,
                     describe(site).c_str(), describe(b.bar_site).c_str()));
  }
  const uint64_t gen = b.bar_generation;
  ++b.bar_arrived;
  ++b.progress;
  if (b.bar_arrived < b.live) {
    wait_until(Wait::kBarrier, [&] { return b.bar_generation != gen || b.failed; });
    return;
  }
  if (cluster != nullptr) cluster_arrive(*cluster);
  b.bar_arrived = 0;
  ++b.bar_generation;
}

}  // namespace

void syncthreads(const Where& at) { block_barrier(at, "__syncthreads()", nullptr); }

void cluster_sync(const Where& at) {
  Block& b = me();
  if (b.cluster == nullptr) fail_here("cluster.sync() in a kernel not launched as a cluster");
  block_barrier(at, "cluster.sync()", b.cluster);
}

void warp_exchange(unsigned mask, uint64_t value, uint64_t* all, const char* what, const Where& at) {
  const Site site = site_of(at);
  Block& b = me();
  const unsigned lane = lane_id(), warp = threadIdx.x >> 5;
  const unsigned lanes_here = std::min(32u, b.threads - warp * 32);
  if (lanes_here < 32 && (mask >> lanes_here) != 0)
    fail_here(format("%s with mask 0x%08x in a warp of only %u threads", what, mask, lanes_here));
  if (!(mask >> lane & 1u)) fail_here(format("%s called by lane %u, outside its mask 0x%08x", what, lane, mask));
  WarpState& w = b.warps[warp];
  const bool check_site = g_settings.check_call_sites;
  Collective* c = nullptr;
  for (Collective& p : w.pending) {
    const bool same = p.what == what && p.mask == mask && (!check_site || p.site == site);
    if (!p.draining && same && !(p.arrived >> lane & 1u)) {
      c = &p;
      break;
    }
  }
  if (c == nullptr) {
    w.pending.emplace_back();
    c = &w.pending.back();
    c->mask = mask;
    c->site = site;
    c->what = what;
  }
  c->values[lane] = value;
  c->arrived |= 1u << lane;
  ++b.progress;
  if (c->arrived == c->mask) c->draining = true;
  wait_until(Wait::kWarp, [&] { return c->draining || b.failed; });
  std::memcpy(all, c->values, sizeof c->values);
  c->departed |= 1u << lane;
  ++b.progress;
  if (c->departed == c->mask) {
    for (auto it = w.pending.begin(); it != w.pending.end(); ++it) {
      if (&*it == c) {
        w.pending.erase(it);
        break;
      }
    }
  }
}

void trap(const char* why) { fail_here(why); }

void* dynamic_smem_base() { return me().dyn.data(); }

unsigned cluster_rank() { return me().rank; }
unsigned cluster_blocks() { return me().cluster == nullptr ? 1 : me().cluster->size; }

namespace {

// Whether [p, p + bytes) lies in one of the __shared__ variables block b has declared so far.
bool declares(Block& b, const char* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(b.shared_mutex);
  for (const auto& [start, size] : b.shared)
    if (p >= start && p + bytes <= start + size) return true;
  return false;
}

}  // namespace

void* map_shared(const void* p, unsigned rank, size_t bytes) {
  Block& b = me();
  if (b.cluster == nullptr) fail_here("map_shared_rank in a kernel not launched as a cluster");
  if (rank >= b.cluster->size) fail_here(format("map_shared_rank: rank %u of a cluster of %u", rank, b.cluster->size));
  Block& other = *b.cluster->blocks[rank];
  if (other.finished.load()) fail_here(format("map_shared_rank: block rank %u of the cluster has exited", rank));
  const char* c = static_cast<const char*>(p);
  const char* dyn = reinterpret_cast<const char*>(b.dyn.data());
  if (c >= dyn && c < dyn + b.dyn_bytes) {
    if (c + bytes > dyn + b.dyn_bytes) fail_here("map_shared_rank: object extends past dynamic shared memory");
    return other.dyn.data() + (c - dyn);
  }
  // A __shared__ (static thread_local) variable: same offset from the anchor in the other block's thread, which must
  // have started and declared it (else a cluster.sync() is missing before the access).
  if (!declares(b, c, bytes)) fail_here("map_shared_rank of an address that is not this block's shared memory");
  char* anchor = other.tls_anchor.load();
  if (anchor != nullptr) {
    char* there = anchor + (c - b.tls_anchor.load());
    if (declares(other, there, bytes)) return there;
  }
  fail_here(format("map_shared_rank: block rank %u of the cluster has not declared that shared variable yet (a "
                   "cluster.sync() is missing before the access)", rank));
}

void shared_decl(void* p, size_t bytes) {
  Block& b = me();
  char* c = static_cast<char*>(p);
  std::lock_guard<std::mutex> lock(b.shared_mutex);  // peers of a cluster read the list (map_shared_rank)
  for (const auto& entry : b.shared)
    if (entry.first == c) return;
  b.shared.emplace_back(c, bytes);
  b.static_bytes += bytes;
  std::memset(c, 0xFF, bytes);
}

// ------------------------------------------------------------------------------------------------- crash reports
// A kernel that dereferences a wild or misaligned pointer (a 16-byte vector load off its alignment) crashes the
// process, as it would fault on a GPU. Before the crash, say which kernel, block and thread did it; then the previous
// handler (Python's faulthandler under pytest) runs as usual.
namespace {

struct sigaction g_previous[2];

void on_fault(int sig, siginfo_t* info, void* context) {
  const int slot = sig == SIGSEGV ? 0 : 1;
  if (tl_block != nullptr) {
    char msg[512];
    const int n = std::snprintf(msg, sizeof msg,
                                "\nfastat CUDA emulator: %s at address %p in a kernel, block (%u,%u,%u) thread %u (an "
                                "out-of-bounds, wild or misaligned access, which faults on a GPU too)\n",
                                sig == SIGSEGV ? "SIGSEGV" : "SIGBUS", info->si_addr, blockIdx.x, blockIdx.y,
                                blockIdx.z, threadIdx.x);
    if (n > 0) (void)!write(2, msg, static_cast<size_t>(n));
  }
  sigaction(sig, &g_previous[slot], nullptr);  // then fault again under the previous handler (or the default)
  (void)context;
}

void install_fault_reporter() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_previous[0]);
    sigaction(SIGBUS, &sa, &g_previous[1]);
  });
}

}  // namespace

// ------------------------------------------------------------------------------------------------------ launches
cudaError_t run_grid(const void* fn, const Config& cfg, unsigned cluster, const std::function<void()>& body) {
#if !FASTAT_EMU_ASAN
  install_fault_reporter();  // (ASan reports faults itself)
#endif
  const unsigned threads = cfg.block.x * cfg.block.y * cfg.block.z;
  const uint64_t blocks = static_cast<uint64_t>(cfg.grid.x) * cfg.grid.y * cfg.grid.z;
  // Dynamic shared memory allowed: the opted-in value, else 48 KB less the kernel's static shared memory (known once
  // the kernel has run: the emulator learns it from the __shared__ declarations its threads execute).
  int smem_limit = g_settings.smem_per_block;
  bool static_known = false;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto st = g_static_smem.find(fn);
    static_known = st != g_static_smem.end();
    if (static_known) smem_limit -= static_cast<int>(st->second);
    auto it = g_dynamic_smem_limit.find(fn);
    if (it != g_dynamic_smem_limit.end()) smem_limit = it->second;
    if (g_log.size() > (1u << 20)) g_log.erase(0, g_log.find('\n', g_log.size() / 2) + 1);  // keep the newest ~512 KB
    g_log += format("%s grid=%u block=%u smem=%zu cluster=%u\n", kernel_name(fn).c_str(), cfg.grid.x, threads,
                    cfg.smem, cluster);
  }
  cudaError_t refused = cudaSuccess;
  if (threads == 0 || threads > 1024 || cfg.block.y != 1 || cfg.block.z != 1 || blocks == 0 || cfg.grid.y > 65535 ||
      cfg.grid.z > 65535)
    refused = cudaErrorInvalidConfiguration;  // (2-D/3-D blocks are valid CUDA but not emulated)
  else if (cfg.smem > static_cast<size_t>(smem_limit))
    refused = cudaErrorInvalidValue;
  else if (cluster > 1 && (!g_settings.cluster_launch || g_settings.refuse_cluster_launch))
    refused = g_settings.cluster_launch ? cudaErrorClusterOutOfResources : cudaErrorInvalidValue;
  else if (cluster == 0 || cluster > 8 || cfg.grid.x % cluster != 0)
    refused = cudaErrorInvalidValue;
  if (refused != cudaSuccess) {
    set_error(refused);
    return refused;
  }
  const dim3 grid = cfg.grid, block_dim = cfg.block;
  auto run_cluster = [&](uint64_t first, size_t* static_bytes) -> std::string {
    std::vector<std::unique_ptr<Block>> owned(cluster);
    Cluster c;
    c.size = cluster;
    for (unsigned r = 0; r < cluster; ++r) {
      owned[r] = std::make_unique<Block>();
      Block& b = *owned[r];
      b.fn = fn;
      b.rank = r;
      b.cluster = cluster > 1 ? &c : nullptr;
      b.dyn_bytes = cfg.smem;
      b.dyn.assign(cfg.smem + kCanaryBytes, 0xCD);  // garbage, as uninitialised shared memory is
      c.blocks.push_back(&b);
    }
    auto index_of = [&](uint64_t linear) {
      return dim3(static_cast<unsigned>(linear % grid.x), static_cast<unsigned>(linear / grid.x % grid.y),
                  static_cast<unsigned>(linear / (static_cast<uint64_t>(grid.x) * grid.y)));
    };
    if (cluster == 1) {
      run_block(*owned[0], index_of(first), grid, block_dim, body);
    } else {
      std::vector<std::thread> workers;
      for (unsigned r = 0; r < cluster; ++r) {
        workers.emplace_back([&, r] {
          Block& b = *owned[r];
          run_block(b, index_of(first + r), grid, block_dim, body);
          std::unique_lock<std::mutex> lock(c.mutex);
          b.finished = true;
          ++c.finished;
          if (b.failed) c.failed = true;
          c.cv.notify_all();
          // Keep this thread's shared memory (its thread_locals) until every block of the cluster is done.
          c.cv.wait(lock, [&] { return c.finished == c.size; });
        });
      }
      for (std::thread& t : workers) t.join();
    }
    for (auto& b : owned) *static_bytes = std::max(*static_bytes, b->static_bytes);
    for (auto& b : owned)
      if (b->failed) return b->error;
    return std::string();
  };
  size_t static_bytes = 0;
  for (uint64_t first = 0; first < blocks; first += cluster) {
    const std::string error = run_cluster(first, &static_bytes);
    if (!error.empty()) {
      record_failure(error);
      set_error(cudaErrorLaunchFailure);
      return cudaSuccess;  // the launch itself was accepted; the failure is sticky, as a device fault is
    }
  }
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_static_smem[fn] = static_bytes;
    if (!static_known && cfg.smem + static_bytes > static_cast<size_t>(g_settings.smem_per_block) &&
        g_dynamic_smem_limit.find(fn) == g_dynamic_smem_limit.end())
      g_log += format("  (learned: %zu bytes of static shared memory; with them this launch does not fit)\n",
                      static_bytes);
  }
  return cudaSuccess;
}
}  // namespace emu

// ------------------------------------------------------------------------------------------------- runtime stand-ins
using emu::g_settings;

cudaError_t cudaGetLastError() {
  std::lock_guard<std::mutex> lock(emu::g_mutex);
  const cudaError_t e = emu::g_last_error;
  if (e != cudaErrorLaunchFailure) emu::g_last_error = cudaSuccess;  // kernel faults are sticky
  return e;
}

cudaError_t cudaPeekAtLastError() {
  std::lock_guard<std::mutex> lock(emu::g_mutex);
  return emu::g_last_error;
}

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorClusterOutOfResources: return "cluster out of resources";
    default: return "emulated CUDA error";
  }
}

cudaError_t cudaGetDevice(int* device) {
  std::lock_guard<std::mutex> lock(emu::g_mutex);
  *device = emu::g_device;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  {
    std::lock_guard<std::mutex> lock(emu::g_mutex);
    if (device != emu::g_device) return cudaErrorInvalidValue;
  }
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = g_settings.smem_per_block; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = g_settings.sm_count; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = g_settings.cluster_launch ? 9 : 8; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = g_settings.smem_optin; return cudaSuccess;
    case cudaDevAttrClusterLaunch: *value = g_settings.cluster_launch ? 1 : 0; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, const void* func) {
  std::memset(attr, 0, sizeof *attr);
  attr->maxThreadsPerBlock = 1024;
  attr->ptxVersion = g_settings.ptx_version != 0 ? g_settings.ptx_version : (g_settings.cluster_launch ? 90 : 80);
  attr->binaryVersion = attr->ptxVersion;
  std::lock_guard<std::mutex> lock(emu::g_mutex);
  auto st = emu::g_static_smem.find(func);
  attr->sharedSizeBytes = st == emu::g_static_smem.end() ? 0 : st->second;
  auto it = emu::g_dynamic_smem_limit.find(func);
  attr->maxDynamicSharedSizeBytes = it == emu::g_dynamic_smem_limit.end()
                                        ? g_settings.smem_per_block - static_cast<int>(attr->sharedSizeBytes)
                                        : it->second;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  size_t static_bytes = 0;
  {
    std::lock_guard<std::mutex> lock(emu::g_mutex);
    auto st = emu::g_static_smem.find(func);
    if (st != emu::g_static_smem.end()) static_bytes = st->second;
  }
  if (value < 0 || static_cast<size_t>(value) + static_bytes > static_cast<size_t>(g_settings.smem_optin)) {
    std::lock_guard<std::mutex> lock(emu::g_mutex);
    if (emu::g_last_error == cudaSuccess) emu::g_last_error = cudaErrorInvalidValue;
    return cudaErrorInvalidValue;
  }
  std::lock_guard<std::mutex> lock(emu::g_mutex);
  emu::g_dynamic_smem_limit[func] = value;
  return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveClusters(int* clusters, const void* func, const cudaLaunchConfig_t* config) {
  (void)func;
  if (!g_settings.cluster_launch) {
    *clusters = 0;
    return cudaErrorInvalidValue;
  }
  const cudaLaunchAttributeValue* dims = emu::cluster_dims(config);
  *clusters = (dims == nullptr || dims->clusterDim.x <= 8) ? g_settings.max_active_clusters : 0;
  return cudaSuccess;
}

// -------------------------------------------------------------------------------------------------- C API (ctypes)
extern "C" {

// Device properties and behaviours the launchers ask about; negative values leave a setting as it is.
void emu_configure(int sm_count, int smem_optin, int cluster_launch, int max_active_clusters,
                   int refuse_cluster_launch, int check_call_sites, int64_t schedule_seed, int ptx_version) {
  std::lock_guard<std::mutex> lock(emu::g_mutex);
  if (sm_count >= 0) g_settings.sm_count = sm_count;
  if (smem_optin >= 0) g_settings.smem_optin = smem_optin;
  if (cluster_launch >= 0) g_settings.cluster_launch = cluster_launch != 0;
  if (max_active_clusters >= 0) g_settings.max_active_clusters = max_active_clusters;
  if (refuse_cluster_launch >= 0) g_settings.refuse_cluster_launch = refuse_cluster_launch != 0;
  if (check_call_sites >= 0) g_settings.check_call_sites = check_call_sites != 0;
  if (schedule_seed >= 0) g_settings.schedule_seed = static_cast<uint64_t>(schedule_seed);
  if (ptx_version >= 0) g_settings.ptx_version = ptx_version;
  emu::g_dynamic_smem_limit.clear();  // a new device: opt-ins start over, and so do the launchers' caches
  ++emu::g_device;
}

// Copies the first kernel failure since the last call (empty: none) into buf and clears it and the sticky error.
int emu_take_failure(char* buf, int size) {
  std::lock_guard<std::mutex> lock(emu::g_mutex);
  const int n = static_cast<int>(emu::g_failure.size());
  std::snprintf(buf, static_cast<size_t>(size), "%s", emu::g_failure.c_str());
  emu::g_failure.clear();
  emu::g_last_error = cudaSuccess;
  return n;
}

// Copies the launch log (one line per launch: kernel grid block smem cluster) into buf and clears it.
int emu_take_log(char* buf, int size) {
  std::lock_guard<std::mutex> lock(emu::g_mutex);
  const int n = static_cast<int>(emu::g_log.size());
  std::snprintf(buf, static_cast<size_t>(size), "%s", emu::g_log.c_str());
  emu::g_log.clear();
  return n;
}

}  // extern "C"
