// Emulator stand-in for cooperative_groups.h: the thread-block-cluster API fastat's kernels use.
#pragma once
#include "emu_cuda.h"

#define _CG_HAS_CLUSTER_GROUP 1

namespace cooperative_groups {

class cluster_group {
 public:
  unsigned block_rank() const { return emu::cluster_rank(); }
  unsigned num_blocks() const { return emu::cluster_blocks(); }
  void sync(const emu::Where& at = emu::Where::current()) const { emu::cluster_sync(at); }
  // The address of *p's counterpart in the shared memory of the cluster's block `rank`.
  template <typename T>
  T* map_shared_rank(T* p, unsigned rank) const {
    return static_cast<T*>(emu::map_shared(p, rank, sizeof(T)));
  }
};

inline cluster_group this_cluster() { return cluster_group(); }

}  // namespace cooperative_groups
