// Deliberately broken kernels (and one correct cluster exchange) that the emulator must catch or run right:
// test_emulator_catches.py checks each failure is reported, so a silent emulator cannot pass the kernel tests.
// Compiled into the emulator library only, never into fastat.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace {

__global__ void divergent_barrier(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

__global__ void collective_missing_lane(float* out) {
  if (threadIdx.x == 0) return;  // lane 0 exits; the full-mask ballot waits for it forever
  out[threadIdx.x] = static_cast<float>(__ballot_sync(0xffffffffu, 1));
}

__global__ void shfl_outside_mask(float* out) {
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0x0000ffffu, 1.f * threadIdx.x, 20);
}

__global__ void smem_overrun(float* out, int n) {
  extern __shared__ float smem[];
  smem[threadIdx.x] = 1.f;  // launched with fewer than blockDim.x floats
  __syncthreads();
  out[threadIdx.x] = smem[threadIdx.x % n];
}

__global__ void traps(float*) { __trap(); }

__global__ void global_overrun(float* out, int n) { out[threadIdx.x] = 2.f; }  // launched with more threads than n

__global__ void global_overread(float* out, int n) {  // launched with n + 2 threads: the last two read past out[n-1]
  const float v = out[threadIdx.x];
  __syncthreads();
  if (threadIdx.x < n) out[threadIdx.x] = v + 1.f;
}

__global__ void cluster_exchange(float* out) {
  __shared__ float mine;
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  if (threadIdx.x == 0) mine = 100.f * blockIdx.x;
  cluster.sync();
  const unsigned next = (cluster.block_rank() + 1) % cluster.num_blocks();
  if (threadIdx.x == 0) out[blockIdx.x] = *cluster.map_shared_rank(&mine, next);
  cluster.sync();
}

__global__ void cluster_early_exit(float* out) {
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  if (cluster.block_rank() == 1) return;  // the other blocks wait in cluster.sync() for it
  cluster.sync();
  out[blockIdx.x] = 1.f;
}

__global__ void warp_sum(float* out) {  // a correct butterfly reduction over each warp
  float v = static_cast<float>(threadIdx.x);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[threadIdx.x] = v;
}

__global__ void missing_barrier(float* out) {
  __shared__ float value;
  if (threadIdx.x == 0) value = 7.f;
  // __syncthreads() belongs here: without it, threads that run before thread 0 read whatever `value` held
  out[threadIdx.x] = value;
  __syncthreads();
  if (threadIdx.x == 0) value = -1.f;  // what a later block (the next launch) finds before thread 0 writes
}

__global__ void uninitialised_shared(float* out) {
  __shared__ float acc;  // never zeroed: a GPU has garbage there; the emulator fills it with 0xFF bytes (NaN)
  __syncthreads();
  if (threadIdx.x == 0) acc += 1.f;
  __syncthreads();
  out[threadIdx.x] = acc;
}

__global__ void barrier_after_exit(float* out) {
  if (threadIdx.x >= 48) return;  // "if (i >= n) return;" before a barrier
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void map_global_pointer(float* out) {
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  out[blockIdx.x] = *cluster.map_shared_rank(out, 0);  // not shared memory
  cluster.sync();
}

// One launch of `kernel` as clusters of `cluster` blocks, `grid` blocks of `threads` in all.
cudaError_t launch_clusters(void (*kernel)(float*), unsigned grid, unsigned cluster, unsigned threads, float* out) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cluster;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(threads);
  config.attrs = attr;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, out);
}

}  // namespace

extern "C" int emu_selftest(int which, float* out, int n) {
  switch (which) {
    case 0: divergent_barrier<<<1, 32>>>(out); break;
    case 1: collective_missing_lane<<<1, 32>>>(out); break;
    case 2: shfl_outside_mask<<<1, 32>>>(out); break;
    case 3: smem_overrun<<<1, 32, 16 * sizeof(float)>>>(out, 16); break;  // 64 bytes past the end
    case 4: traps<<<1, 1>>>(out); break;
    case 5: global_overrun<<<1, n + 1>>>(out, n); break;
    case 6: return launch_clusters(n == 0 ? cluster_exchange : cluster_early_exit, 8, 4, 64, out);
    case 7: warp_sum<<<1, 64>>>(out); break;
    case 8: warp_sum<<<1, 1025>>>(out); break;  // too many threads: refused at launch
    case 9: missing_barrier<<<1, 64>>>(out); break;
    case 10: uninitialised_shared<<<2, 32>>>(out); break;
    case 11: barrier_after_exit<<<1, 64>>>(out); break;
    case 12: return launch_clusters(map_global_pointer, 2, 2, 32, out);
    case 13: global_overread<<<1, n + 2>>>(out, n); break;
    default: return -1;
  }
  return cudaGetLastError();
}
