// parallel::Context — everything the trainer asks of other ranks, in one place.
// world = dp × tp with tp innermost (a tensor-parallel group stays inside a node).
// Single process (no mpirun) is the trivial case: every call is the identity.
//
// The trainer's step is:
//   for each micro-batch: model.forward_backward(...)   (grads accumulate in fp32)
//   ctx.reduce_gradients(model)                          (sum over DP; ZeRO-1 may reduce-scatter)
//   stats = ctx.optimizer_step(adamw, model, lr)         (global-norm clip across shards, update,
//                                                         all-gather of updated weights)
// and loss sums / token counts go through all_reduce_sum.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "core/backend.h"
#include "core/config.h"
#include "core/optimizer.h"

namespace mlkv {
class Model;
}

namespace mlkv::parallel {

struct Topology {
  int world_size = 1, world_rank = 0, local_rank = 0;
  int dp = 1, tp = 1, dp_rank = 0, tp_rank = 0;
  std::string describe() const;  // "rank 3/8 (dp 1/4, tp 1/2, local 3)"
};

class Context {
 public:
  virtual ~Context() = default;
  const Topology& topo() const { return topo_; }
  bool is_root() const { return topo_.world_rank == 0; }

  virtual double all_reduce_sum(double x) { return x; }                 // over the whole world's DP
  virtual void reduce_gradients(Model& /*model*/) {}                     // sum fp32 grads over DP
  virtual UpdateStats optimizer_step(AdamW& opt, Model& model, double lr);  // default: plain AdamW
  virtual void barrier() {}
  virtual bool any_rank_true(bool x) { return x; }                       // e.g. a stop signal on any rank

 protected:
  Topology topo_;
};

// Creates the context for this process: under mpirun/srun (OMPI_COMM_WORLD_SIZE, PMI/SLURM
// variables) an MPI-backed one with dp = world / parallel.tp; otherwise the single-process one.
std::unique_ptr<Context> make_context(const Config& cfg, Backend& backend);

}  // namespace mlkv::parallel
