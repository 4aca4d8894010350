// Launch detection and the dp × tp rank arithmetic.
#include "parallel/topology.h"

#include <mpi.h>

#include <cstdlib>

#include "core/env.h"
#include "core/errors.h"
#include "parallel/mpi_communicator.h"

namespace mlkv::parallel {

std::string Topology::describe() const {
  return "rank " + std::to_string(world_rank) + "/" + std::to_string(world_size) + " (dp " + std::to_string(dp_rank) +
         "/" + std::to_string(dp) + ", tp " + std::to_string(tp_rank) + "/" + std::to_string(tp) + ", local " +
         std::to_string(local_rank) + ")";
}


LaunchInfo detect_launch() {
  LaunchInfo li;
  struct Vars {
    const char *size, *rank, *local, *source;
  };
  // Open MPI's own names first: under mpirun inside a Slurm allocation both sets exist and the
  // SLURM_* ones describe the allocation, not this job step.
  static const Vars kVars[] = {
      {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_*"},
      {"PMIX_SIZE", "PMIX_RANK", "PMIX_LOCAL_RANK", "PMIX_*"},
      {"SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_*"},
      {"PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID", "PMI_*"},
  };
  for (const Vars& v : kVars) {
    const int rank = static_cast<int>(env_int(v.rank, -1));
    if (rank < 0) continue;
    li.world_rank = rank;
    li.world_size = static_cast<int>(env_int(v.size, 1));
    li.local_rank = static_cast<int>(env_int(v.local, -1));
    li.source = v.source;
    // srun without --ntasks inside an allocation, or PMIX without a size variable: MPI decides.
    li.distributed = li.world_size > 1 || std::getenv("PMIX_RANK") || std::getenv("OMPI_COMM_WORLD_SIZE");
    return li;
  }
  li.source = "none";
  return li;
}

int local_rank() {
  const LaunchInfo li = detect_launch();
  if (!li.distributed) return 0;
  if (li.local_rank >= 0) return li.local_rank;
  ensure_mpi_initialized();
  MPI_Comm node = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
            "MPI_Comm_split_type", "node");
  int r = 0;
  MPI_Comm_rank(node, &r);
  MPI_Comm_free(&node);
  return r;
}

Topology make_topology(int world_size, int world_rank, int local_rank_, int tp) {
  if (tp < 1 || world_size % tp != 0)
    throw ConfigError("parallel.tp = " + std::to_string(tp) + " must divide the number of ranks (" +
                      std::to_string(world_size) + "): world = dp x tp");
  Topology t;
  t.world_size = world_size;
  t.world_rank = world_rank;
  t.local_rank = local_rank_;
  t.tp = tp;
  t.dp = world_size / tp;
  t.tp_rank = world_rank % tp;
  t.dp_rank = world_rank / tp;
  return t;
}

}  // namespace mlkv::parallel
