// Thread-block cluster helpers (sm_90+) shared by the kernels that split a row over the blocks of a cluster.
#pragma once

#include <cooperative_groups.h>

#include <cstdint>

namespace fastat {
namespace cuda {

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

}  // namespace cuda
}  // namespace fastat
