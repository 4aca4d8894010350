// NCCL communicators for device memory, bootstrapped over MPI (the world's unique id is
// broadcast with MPI_Bcast; the dp, tp and kv groups come from ncclCommSplit). Plain C++ header:
// the implementation is compiled only with MLKV_HAVE_CUDA.
//
// Failure handling: a watchdog thread polls ncclCommGetAsyncError of every communicator and the
// completion of every collective issued; an error, or a collective unfinished after
// parallel.comm_timeout_s seconds, aborts all communicators (ncclCommAbort), logs which
// collective on which group, and exits the process (kExitCommTimeout after a timeout,
// kExitFailure after an error) — mpirun/srun then stop the other ranks. Collectives run on the backend's stream (Queue::compute) or on a second,
// high-priority stream (Queue::side) for overlapped gradient buckets.
#pragma once
#include <memory>

#include "core/backend.h"
#include "parallel/communicator.h"
#include "parallel/topology.h"

namespace mlkv::parallel {

struct DeviceGroups {
  std::unique_ptr<Communicator> world, dp, tp;
  std::unique_ptr<Communicator> kv;  // tp ranks sharing one replicated KV head; null when split
  std::shared_ptr<void> runtime;     // streams, events and the watchdog, shared by the four
};

// Collective over MPI_COMM_WORLD (MPI must be initialised). `kv_copies` = tp ranks per KV head.
DeviceGroups make_nccl_groups(Backend& backend, const Topology& topo, int kv_copies, double timeout_s);

}  // namespace mlkv::parallel
