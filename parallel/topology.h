// Topology: where this process sits in world = dp × tp, tp innermost (world rank =
// dp_rank·tp + tp_rank), so a tensor-parallel group is tp consecutive ranks — one node when
// ranks are placed by node, which is what mpirun and srun do by default.
// Launch detection reads Open MPI, PMIx/PMI (MPICH, srun --mpi=pmix) and Slurm variables; the
// local rank (which GPU) falls back to MPI_Comm_split_type(MPI_COMM_TYPE_SHARED).
#pragma once
#include <string>

namespace mlkv::parallel {

struct Topology {
  int world_size = 1, world_rank = 0, local_rank = 0;
  int dp = 1, tp = 1, dp_rank = 0, tp_rank = 0;
  std::string describe() const;  // "rank 3/8 (dp 1/4, tp 1/2, local 3)"
  // dp_rank·tp + tp_rank of another rank of this topology
  int world_rank_of(int dp_rank_, int tp_rank_) const { return dp_rank_ * tp + tp_rank_; }
};

struct LaunchInfo {
  bool distributed = false;  // started by mpirun / srun / a PMI launcher with more than one rank
  int world_size = 1, world_rank = 0;
  int local_rank = -1;       // -1: no variable names it (ask MPI)
  std::string source;        // "OMPI_COMM_WORLD_*", "SLURM_*", "PMIX_*", "PMI_*" or "none"
};

// From environment variables only (no MPI call).
LaunchInfo detect_launch();
// This process's index among the ranks on its node: picks its GPU. Under a launcher that does
// not say, initialises MPI and splits the world by shared memory.
int local_rank();
// world = dp × tp; throws ConfigError when tp does not divide the world size.
Topology make_topology(int world_size, int world_rank, int local_rank, int tp);

}  // namespace mlkv::parallel
