// Thread-block cluster helpers (sm_90+) shared by the kernels that split a row over the blocks of a cluster: the
// device-side position of a block, and the host-side launch configuration and "does it fit" query.
#pragma once

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernel_utils.cuh"

namespace fastat {
namespace cuda {

constexpr int kMaxCluster = 8;  // the portable cluster size: the most blocks per cluster any cluster GPU runs

// This block's rank in its cluster and the cluster's size; (0, 1) when kCluster is false. A kCluster kernel compiled
// for an architecture without clusters traps (launchers only use it where cluster launch is supported).
template <bool kCluster>
__device__ __forceinline__ void cluster_position(uint32_t& rank, uint32_t& blocks) {
  rank = 0;
  blocks = 1;
  if constexpr (kCluster) {
#if defined(_CG_HAS_CLUSTER_GROUP)
    rank = cooperative_groups::this_cluster().block_rank();
    blocks = cooperative_groups::this_cluster().num_blocks();
#else
    __trap();
#endif
  }
}

// cudaLaunchKernelEx configuration of a 1-D grid of `grid` blocks in clusters of `blocks` consecutive blocks. Not
// copyable: `config.attrs` points into the object.
struct ClusterLaunch {
  cudaLaunchAttribute attr[1];
  cudaLaunchConfig_t config;

  ClusterLaunch(unsigned grid, int blocks, int threads, int64_t smem_bytes, cudaStream_t stream) : attr{}, config{} {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = static_cast<unsigned>(blocks);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    config.gridDim = dim3(grid);
    config.blockDim = dim3(static_cast<unsigned>(threads));
    config.dynamicSmemBytes = static_cast<size_t>(smem_bytes);
    config.stream = stream;
    config.attrs = attr;
    config.numAttrs = 1;
  }
  ClusterLaunch(const ClusterLaunch&) = delete;
  ClusterLaunch& operator=(const ClusterLaunch&) = delete;
};

// Whether the current device can hold at least one cluster of `blocks` blocks of `kernel`, each of `threads` threads
// and `smem_bytes` of dynamic shared memory (cudaOccupancyMaxActiveClusters > 0), asked once per (kernel, device,
// blocks, threads, smem_bytes). Launchers take their non-cluster path up front when it answers no, rather than rely on
// a refused launch (under CUDA-graph capture a launch that cannot run may only fail at replay). A failed query answers
// "try": the caller still falls back if the launch itself is refused. Dynamic shared memory above 48 KB must have been
// opted in to before asking. Also "no" where the code the device runs for `kernel` was compiled for an architecture
// without clusters (a build for, say, TORCH_CUDA_ARCH_LIST="8.0+PTX" JIT-compiled on an H100): its cluster branch is
// a __trap() (cluster_position), which would kill the CUDA context.
inline bool cluster_fits(const void* kernel, int blocks, int threads, int64_t smem_bytes) {
  static HostMemo memo;
  const int64_t shape = static_cast<int64_t>(threads) << 16 | blocks;
  return memo.get(kernel, shape, smem_bytes, [&] {
           cudaFuncAttributes attr;
           if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) {
             (void)cudaGetLastError();
           } else if (attr.ptxVersion > 0 && attr.ptxVersion < 90) {
             return 0;
           }
           const ClusterLaunch launch(static_cast<unsigned>(blocks), blocks, threads, smem_bytes, nullptr);
           int clusters = 0;
           if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &launch.config) != cudaSuccess) {
             (void)cudaGetLastError();  // answered by the return value; leave no pending error behind
             return 1;
           }
           return clusters > 0 ? 1 : 0;
         }) != 0;
}

}  // namespace cuda
}  // namespace fastat
