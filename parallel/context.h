// parallel::Context — everything the trainer asks of other ranks, in one place.
// world = dp × tp with tp innermost (a tensor-parallel group stays inside a node).
// Single process (no mpirun) is the trivial case: every call is the identity.
//
// The trainer's setup and step are:
//   auto ctx = make_context(cfg, backend);            (backend on GPU parallel::local_rank())
//   Model model(spec, backend, B, T, recompute, ctx->model_parallel());
//   auto opt = ctx->make_optimizer(model, cfg.optim); (ZeRO-1: AdamW over this rank's shard)
//   for each micro-batch i of n:
//     ctx->before_backward(model, i == n - 1)         (last one: buckets reduce during backward)
//     model.forward_backward(...)                     (grads accumulate in fp32)
//   ctx->reduce_gradients(model)                      (sum over DP; ZeRO-1 reduce-scatters)
//   stats = ctx->optimizer_step(*opt, model, lr)      (global-norm clip across shards, update,
//                                                      all-gather of updated weights)
// and loss sums / token counts go through all_reduce_sum (over DP: tp ranks hold the same loss).
// Checkpoints hold full tensors by name (tp = 1 shapes): gather_tensor / scatter_tensor (or the
// whole-model gather_full / scatter_full) convert between them and any dp × tp layout.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/config.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "parallel/topology.h"

namespace mlkv::parallel {

// Which per-parameter state a checkpoint tensor holds.
enum class StateKind { master, adam_m, adam_v };

class Context {
 public:
  virtual ~Context() = default;
  const Topology& topo() const { return topo_; }
  bool is_root() const { return topo_.world_rank == 0; }
  // "[rank 3] " — prefix for log lines written by more than one rank.
  std::string log_prefix() const { return "[rank " + std::to_string(topo_.world_rank) + "] "; }

  virtual double all_reduce_sum(double x) { return x; }                 // over the data-parallel ranks
  virtual void reduce_gradients(Model& /*model*/) {}                     // sum fp32 grads over DP
  virtual UpdateStats optimizer_step(AdamW& opt, Model& model, double lr);  // default: plain AdamW
  virtual void barrier() {}
  virtual bool any_rank_true(bool x) { return x; }                       // e.g. a stop signal on any rank

  // How the Model of this rank is cut (tensor parallelism, padded buffers): pass to its constructor.
  virtual ModelParallel model_parallel() const { return {}; }
  // The optimizer for `model`: under ZeRO-1 its moments (and the fp32 master) cover only this
  // rank's shard. Binds the context to `model`; the context must outlive both.
  virtual std::unique_ptr<AdamW> make_optimizer(Model& model, const OptimSection& opt);
  // Before each micro-batch's forward_backward: on the last one, gradient buckets are reduced
  // while the backward runs (not calling it is correct, only slower).
  virtual void before_backward(Model& /*model*/, bool /*last_micro_batch*/) {}

  // ---- checkpoints: full (tp = 1) tensors by ParamLayout name
  // Collective over all ranks: tensor `name` of `kind`, full shape, on the root (empty elsewhere).
  virtual std::vector<float> gather_tensor(Model& model, AdamW& opt, const std::string& name, StateKind kind);
  // Every rank passes the same full tensor (full.size() = its tp = 1 numel); each keeps its slice.
  // Not collective. Master: updates the compute copy too.
  virtual void scatter_tensor(Model& model, AdamW& opt, const std::string& name, StateKind kind,
                              const std::vector<float>& full);
  // Whole model, in ParamLayout(model.spec()) (tp = 1) order and length; gather: on the root only.
  std::vector<float> gather_full(Model& model, AdamW& opt, StateKind kind);
  void scatter_full(Model& model, AdamW& opt, StateKind kind, const std::vector<float>& full);

 protected:
  Topology topo_;
};

// Creates the context for this process: under mpirun/srun (Open MPI, PMIx, PMI or Slurm
// variables) an MPI-backed one with dp = world / parallel.tp — NCCL for device data when the
// backend is CUDA, MPI otherwise; without a launcher the single-process one.
std::unique_ptr<Context> make_context(const Config& cfg, Backend& backend);

// In a multi-rank job, ends every rank now with `exit_code` (MPI_Abort): for error paths, where
// returning from main would leave the other ranks waiting in a collective forever.
[[noreturn]] void abort_job(int exit_code);

}  // namespace mlkv::parallel
