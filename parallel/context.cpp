// Single-process parallel::Context; the MPI/NCCL one lives beside it.
#include "parallel/context.h"

#include "core/model.h"

namespace mlkv::parallel {

std::string Topology::describe() const {
  return "rank " + std::to_string(world_rank) + "/" + std::to_string(world_size) + " (dp " + std::to_string(dp_rank) +
         "/" + std::to_string(dp) + ", tp " + std::to_string(tp_rank) + "/" + std::to_string(tp) + ", local " +
         std::to_string(local_rank) + ")";
}

UpdateStats Context::optimizer_step(AdamW& opt, Model& model, double lr) {
  UpdateStats st = opt.step(model.master(), model.compute_params(), model.grads(), lr);
  return st;
}

// Replaced by the distributed implementation; until then every run is one process.
std::unique_ptr<Context> make_context(const Config& /*cfg*/, Backend& /*backend*/) {
  return std::make_unique<Context>();
}

}  // namespace mlkv::parallel
