// DistributedContext: the parallel::Context of a multi-rank job (see context.h for the calls).
//
//   groups   host (MPI, deterministic): world, dp, tp — scalars, checkpoint gathers;
//            device (NCCL on CUDA, the host ones on the CPU backend): dp, tp, kv.
//   DP       gradients reduced in buckets (DpPlan) on the side queue as the last micro-batch's
//            backward produces them: reduce-scatter into this rank's shard (ZeRO-1) or
//            all-reduce in place (parallel.zero1 = false).
//   ZeRO-1   fp32 master, Adam m and v exist only for the shard (AdamW over ParamLayout::
//            restricted); after the update the shard's new weights (bf16 compute copy on CUDA,
//            the fp32 master on the CPU) are all-gathered into every rank's full copy.
//   TP       the Model does the activation collectives; here: the replicated K/V projections'
//            partial gradients are all-reduced over the ranks sharing the head (kv group), and
//            the global gradient norm counts every replicated tensor once.
#pragma once
#include <memory>
#include <vector>

#include "parallel/context.h"
#include "parallel/dp_plan.h"
#include "parallel/mpi_communicator.h"
#include "parallel/nccl_communicator.h"

namespace mlkv::parallel {

class DistributedContext final : public Context {
 public:
  DistributedContext(const Config& cfg, Backend& backend, const Topology& topo);
  ~DistributedContext() override;

  double all_reduce_sum(double x) override;
  void reduce_gradients(Model& model) override;
  UpdateStats optimizer_step(AdamW& opt, Model& model, double lr) override;
  void barrier() override;
  bool any_rank_true(bool x) override;
  ModelParallel model_parallel() const override;
  std::unique_ptr<AdamW> make_optimizer(Model& model, const OptimSection& opt) override;
  void before_backward(Model& model, bool last_micro_batch) override;
  std::vector<float> gather_tensor(Model& model, AdamW& opt, const std::string& name, StateKind kind) override;
  void scatter_tensor(Model& model, AdamW& opt, const std::string& name, StateKind kind,
                      const std::vector<float>& full) override;

  // Optimizer state (fp32 master + Adam m, v) this rank holds, in bytes: ≈ 12·P/dp under ZeRO-1.
  int64_t optimizer_state_bytes() const;
  bool sharded() const { return zero1_ && topo_.dp > 1; }
  const DpPlan& plan() const { return plan_; }
  bool uses_nccl() const { return nccl_.world != nullptr; }

 private:
  struct Segment {
    int64_t begin, count;
    int copies;
  };
  void bind(Model& model, bool zero1);
  void adopt(Model& model, AdamW* opt);
  void on_grads_ready(int64_t from);
  void issue_param_gathers(int64_t upto);
  void on_params_needed(int64_t need, int64_t ahead);
  void finish_param_gathers();
  bool reduces() const { return topo_.dp > 1 || kv_copies_ > 1; }
  const ParamLayout& tp_layout(int tp_rank);

  Backend& be_;
  ModelSpec spec_;
  bool zero1_;
  double bucket_mb_;
  int kv_copies_ = 1;
  std::unique_ptr<MpiCommunicator> host_world_, host_dp_, host_tp_, host_kv_;
  DeviceGroups nccl_;
  Communicator *dev_dp_ = nullptr, *dev_tp_ = nullptr, *dev_kv_ = nullptr;

  Model* model_ = nullptr;
  AdamW* opt_ = nullptr;
  DpPlan plan_;
  std::unique_ptr<ParamLayout> shard_layout_;
  float *master_shard_ = nullptr, *grad_shard_ = nullptr;
  void* compute_shard_ = nullptr;
  std::vector<Segment> kv_segments_;    // model-buffer coords, top first: partial K/V grads
  std::vector<Segment> norm_segments_;  // coords of the buffer the norm is taken over
  size_t next_kv_ = 0, next_bucket_ = 0;
  bool hooked_ = false;
  // ZeRO-1 all-gathers of the updated compute copy still owed to the next forward: buckets
  // counted from the bottom of the buffer; gathers_issued_ < gathers_due_ while some are unissued.
  size_t gathers_issued_ = 0, gathers_due_ = 0;
  std::vector<std::unique_ptr<ParamLayout>> tp_layouts_;  // every tp rank's layout (checkpoints)
};

}  // namespace mlkv::parallel
