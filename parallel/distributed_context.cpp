// DistributedContext: data parallelism (bucketed, overlapped, ZeRO-1), the tensor-parallel
// gradient fix-ups, and checkpoint gather/scatter across any dp × tp layout.
#include "parallel/distributed_context.h"

#include <algorithm>
#include <cstdio>

#include "core/errors.h"
#include "parallel/state_io.h"

namespace mlkv::parallel {

DistributedContext::DistributedContext(const Config& cfg, Backend& backend, const Topology& topo)
    : be_(backend), spec_(cfg.spec()), zero1_(cfg.parallel.zero1), bucket_mb_(cfg.parallel.bucket_mb) {
  topo_ = topo;
  const int KVH = spec_.kv.kv_heads, tp = topo.tp;
  kv_copies_ = KVH % tp == 0 ? 1 : tp / KVH;
  (void)ParamLayout(spec_, tp, topo.tp_rank);  // the shapes must split: a clear ConfigError now, not later

  MPI_Comm world = MPI_COMM_NULL;
  check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &world), "MPI_Comm_dup", "world");
  const double timeout = cfg.parallel.comm_timeout_s;  // of every collective, MPI and NCCL alike
  host_world_ = std::make_unique<MpiCommunicator>(world, "world", timeout);
  host_dp_ = MpiCommunicator::split(world, topo.tp_rank, topo.dp_rank, "dp", timeout);
  host_tp_ = MpiCommunicator::split(world, topo.dp_rank, topo.tp_rank, "tp", timeout);
  if (kv_copies_ > 1)
    host_kv_ = MpiCommunicator::split(world, topo.dp_rank * tp + topo.tp_rank / kv_copies_, topo.tp_rank, "kv", timeout);
  if (be_.device() == Device::cuda) {
    nccl_ = make_nccl_groups(be_, topo, kv_copies_, timeout);
    dev_dp_ = nccl_.dp.get();
    dev_tp_ = nccl_.tp.get();
    dev_kv_ = nccl_.kv.get();
  } else {
    dev_dp_ = host_dp_.get();
    dev_tp_ = host_tp_.get();
    dev_kv_ = host_kv_.get();
  }
  std::fprintf(stderr, "%s%s, backend %s, %s collectives%s\n", log_prefix().c_str(), topo.describe().c_str(),
               be_.name().c_str(), uses_nccl() ? "NCCL" : "MPI",
               kv_copies_ > 1 ? (", KV heads replicated x" + std::to_string(kv_copies_)).c_str() : "");
}

// The model may already be gone (the trainer destroys it first): only our own buffers here.
DistributedContext::~DistributedContext() {
  be_.synchronize();
  for (void* p : {static_cast<void*>(master_shard_), static_cast<void*>(grad_shard_), compute_shard_})
    if (p) be_.release(p);
}

double DistributedContext::all_reduce_sum(double x) {
  host_dp_->all_reduce(&x, 1, DType::f64, ReduceOp::sum);
  return x;
}

bool DistributedContext::any_rank_true(bool x) {
  double v = x ? 1.0 : 0.0;
  host_world_->all_reduce(&v, 1, DType::f64, ReduceOp::max);
  return v > 0;
}

void DistributedContext::barrier() {
  be_.synchronize();
  host_world_->barrier();
}

ModelParallel DistributedContext::model_parallel() const {
  ModelParallel p;
  p.tp = topo_.tp;
  p.tp_rank = topo_.tp_rank;
  p.tp_comm = dev_tp_;
  p.buffer_multiple = DpPlan::buffer_multiple(topo_.dp);
  return p;
}

std::unique_ptr<AdamW> DistributedContext::make_optimizer(Model& model, const OptimSection& opt) {
  if (model_) throw Error("make_optimizer: this context already serves a model");
  bind(model, zero1_);
  auto o = sharded() ? std::make_unique<AdamW>(be_, *shard_layout_, opt) : std::make_unique<AdamW>(be_, model.layout(), opt);
  opt_ = o.get();
  return o;
}

// A trainer that built its own AdamW (full moments) and never called make_optimizer still gets
// correct data parallelism: gradients all-reduced, every rank updating the whole model.
void DistributedContext::adopt(Model& model, AdamW* opt) {
  if (!model_) {
    std::fprintf(stderr, "%sparallel: optimizer not made by Context::make_optimizer: ZeRO-1 is off (replicated "
                 "optimizer state, all-reduced gradients)\n", log_prefix().c_str());
    bind(model, false);
  }
  if (&model != model_) throw Error("parallel::Context serves one model; this is another");
  if (opt && !opt_) opt_ = opt;
}

void DistributedContext::bind(Model& model, bool zero1) {
  zero1_ = zero1;
  const ModelParallel& mp = model.parallel();
  if (mp.tp != topo_.tp || mp.tp_rank != topo_.tp_rank ||
      (sharded() && mp.buffer_multiple % DpPlan::buffer_multiple(topo_.dp)))
    throw Error("the model was not built for this rank's layout (tp " + std::to_string(topo_.tp) +
                "): pass ctx->model_parallel() to its constructor");
  model_ = &model;
  const ParamLayout& layout = model.layout();

  // Replicated tensors: K/V rows whose gradients need the kv all-reduce, and everything the
  // norm must count once. Alignment gaps between adjacent segments hold zeros: merge across them.
  std::vector<Segment> replicated;
  for (const ParamView& v : layout.views()) {
    if (v.tp.copies <= 1 || v.tp.rep_count == 0) continue;
    const Segment s{v.offset + v.tp.rep_begin, v.tp.rep_count, v.tp.copies};
    if (v.tp.partial_grads) kv_segments_.push_back(s);
    Segment* last = replicated.empty() ? nullptr : &replicated.back();
    if (last && last->copies == s.copies && s.begin <= (last->begin + last->count + 63) / 64 * 64)
      last->count = s.begin + s.count - last->begin;
    else
      replicated.push_back(s);
  }
  std::reverse(kv_segments_.begin(), kv_segments_.end());  // the backward reaches the top first

  if (topo_.dp > 1) plan_ = DpPlan(model.buffer_elems(), topo_.dp, bucket_mb_, sharded());
  if (sharded()) {
    const int64_t S = plan_.shard_elems();
    shard_layout_ = std::make_unique<ParamLayout>(ParamLayout::restricted(layout, plan_.shard_ranges(topo_.dp_rank)));
    master_shard_ = static_cast<float*>(be_.alloc(S * sizeof(float)));
    grad_shard_ = static_cast<float*>(be_.alloc(S * sizeof(float)));
    if (be_.act_bytes() != 4) compute_shard_ = be_.alloc(S * be_.act_bytes());
    auto take_shard = [this](const float* master) {
      for (const auto& sp : plan_.spans(topo_.dp_rank, 0, plan_.shard_elems() * topo_.dp))
        be_.copy(master_shard_ + sp.local, master + sp.begin, (sp.end - sp.begin) * sizeof(float));
    };
    take_shard(model.master());
    model.set_master_listener(take_shard);
    model.drop_master();  // bf16 backends: the full fp32 copy is no longer needed
    for (const Segment& s : replicated)
      for (const auto& sp : plan_.spans(topo_.dp_rank, s.begin, s.begin + s.count))
        norm_segments_.push_back({sp.local, sp.end - sp.begin, s.copies});
  } else {
    norm_segments_ = replicated;
  }
}

int64_t DistributedContext::optimizer_state_bytes() const {
  if (!model_) return 0;
  const int64_t n = sharded() ? plan_.shard_elems() : model_->layout().total();
  return 3 * n * static_cast<int64_t>(sizeof(float));
}

void DistributedContext::before_backward(Model& model, bool last_micro_batch) {
  if (&model != model_ || !reduces()) return;
  if (!last_micro_batch) {
    model.set_grad_ready_hook(nullptr);
    hooked_ = false;
    return;
  }
  next_kv_ = next_bucket_ = 0;
  hooked_ = true;
  model.set_grad_ready_hook([this](int64_t from) { on_grads_ready(from); });
}

// Gradients at offsets >= from are final: launch, on the side queue, the K/V all-reduces and
// then the buckets that lie entirely above `from`, in a fixed order every rank shares.
void DistributedContext::on_grads_ready(int64_t from) {
  const auto& buckets = plan_.buckets();
  const bool kv_due = next_kv_ < kv_segments_.size() && kv_segments_[next_kv_].begin >= from;
  const bool bucket_due = next_bucket_ < buckets.size() && buckets[next_bucket_].lo >= from;
  if (!kv_due && !bucket_due) return;
  dev_dp_->side_wait_compute();
  float* grads = model_->grads();
  for (; next_kv_ < kv_segments_.size() && kv_segments_[next_kv_].begin >= from; ++next_kv_)
    dev_kv_->all_reduce(grads + kv_segments_[next_kv_].begin, kv_segments_[next_kv_].count, DType::f32,
                        ReduceOp::sum, Queue::side);
  for (; next_bucket_ < buckets.size() && buckets[next_bucket_].lo >= from; ++next_bucket_) {
    const Bucket& b = buckets[next_bucket_];
    if (sharded())
      dev_dp_->reduce_scatter(grad_shard_ + b.local_off, grads + b.lo, b.piece, DType::f32, Queue::side);
    else
      dev_dp_->all_reduce(grads + b.lo, b.hi - b.lo, DType::f32, ReduceOp::sum, Queue::side);
  }
}

void DistributedContext::reduce_gradients(Model& model) {
  adopt(model, nullptr);
  if (!reduces()) return;
  if (!hooked_) next_kv_ = next_bucket_ = 0;
  on_grads_ready(0);  // whatever the backward did not launch (everything, without the hook)
  dev_dp_->compute_wait_side();
  model.set_grad_ready_hook(nullptr);
  hooked_ = false;
  next_kv_ = next_bucket_ = 0;
}

UpdateStats DistributedContext::optimizer_step(AdamW& opt, Model& model, double lr) {
  adopt(model, &opt);
  if (&opt != opt_)
    throw Error("optimizer_step: use the optimizer ctx->make_optimizer(model, ...) returned");
  const bool sh = sharded();
  float* grads = sh ? grad_shard_ : model.grads();
  // Σg² of what this rank holds, each replicated tensor counted 1/copies times, then summed over
  // the ranks holding distinct parts: every rank (ZeRO-1 shards), or the tp group.
  double local = be_.sum_squares(grads, sh ? plan_.shard_elems() : model.buffer_elems());
  for (const Segment& s : norm_segments_)
    local -= (1.0 - 1.0 / s.copies) * be_.sum_squares(grads + s.begin, s.count);
  (sh ? *host_world_ : *host_tp_).all_reduce(&local, 1, DType::f64, ReduceOp::sum);
  local = std::max(0.0, local);
  if (!sh) return opt.step(model.master(), model.compute_params(), model.grads(), lr, local);

  finish_param_gathers();  // a step without a forward since the last one (never in training)
  const UpdateStats st = opt.step(master_shard_, compute_shard_, grad_shard_, lr, local);
  if (st.skipped) return st;
  // Every rank's updated piece of every bucket goes into every rank's full compute copy, but not
  // here: the next forward asks for each layer's weights as it reaches them (on_params_needed),
  // so the all-gathers run under the forward's compute instead of between two steps.
  dev_dp_->side_wait_compute();  // after the update of the shard
  gathers_issued_ = 0;
  gathers_due_ = plan_.buckets().size();
  model.set_params_needed_hook([this](int64_t need, int64_t ahead) { on_params_needed(need, ahead); });
  return st;
}

// Side-queue all-gathers of the buckets that start below `upto`, bottom of the buffer first (the
// order the forward reads it), each issued once.
void DistributedContext::issue_param_gathers(int64_t upto) {
  const auto& buckets = plan_.buckets();  // top first
  const int ab = be_.act_bytes();
  const char* src = compute_shard_ ? static_cast<const char*>(compute_shard_)
                                   : reinterpret_cast<const char*>(master_shard_);
  char* dst = static_cast<char*>(model_->compute_params());
  for (; gathers_issued_ < gathers_due_; ++gathers_issued_) {
    const Bucket& b = buckets[buckets.size() - 1 - gathers_issued_];
    if (b.lo >= upto) break;
    dev_dp_->all_gather(dst + b.lo * ab, src + b.local_off * ab, b.piece, act_dtype(ab), Queue::side);
  }
}

// The forward is about to read the weights below `need`: wait for their gathers (and any issued
// earlier), then start those of the next stage so they overlap this one's compute.
void DistributedContext::on_params_needed(int64_t need, int64_t ahead) {
  issue_param_gathers(need);
  dev_dp_->compute_wait_side();
  if (gathers_issued_ == gathers_due_) {  // all issued before the wait: the copy is whole
    gathers_issued_ = gathers_due_ = 0;
    model_->set_params_needed_hook(nullptr);
    return;
  }
  issue_param_gathers(ahead);
}

// Completes the owed gathers now: before anything but the forward touches the compute copy.
void DistributedContext::finish_param_gathers() {
  if (gathers_due_ == 0) return;
  on_params_needed(INT64_MAX, INT64_MAX);
}

const ParamLayout& DistributedContext::tp_layout(int t) {
  if (tp_layouts_.empty()) tp_layouts_.resize(topo_.tp);
  if (!tp_layouts_[t]) tp_layouts_[t] = std::make_unique<ParamLayout>(spec_, topo_.tp, t);
  return *tp_layouts_[t];
}

std::vector<float> DistributedContext::gather_tensor(Model& model, AdamW& opt, const std::string& name,
                                                     StateKind kind) {
  adopt(model, &opt);
  if (&opt != opt_) throw Error("gather_tensor: not this context's optimizer");
  finish_param_gathers();
  const ParamView& v = model.layout().at(name);
  const bool sh = sharded();
  // This rank's contribution: its shard's pieces of the view (ZeRO-1), or the whole local view
  // from DP rank 0 of its tp rank.
  std::vector<float> mine;
  if (sh) {
    const float* base = kind == StateKind::master ? master_shard_ : kind == StateKind::adam_m ? opt.m() : opt.v();
    for (const auto& sp : plan_.spans(topo_.dp_rank, v.offset, v.offset + v.numel)) {
      const size_t at = mine.size();
      mine.resize(at + (sp.end - sp.begin));
      be_.download(mine.data() + at, base + sp.local, (sp.end - sp.begin) * sizeof(float));
    }
  } else if (topo_.dp_rank == 0) {
    mine = read_view(model, opt, v, kind);
  }
  const int W = topo_.world_size, n = static_cast<int>(mine.size());
  std::vector<int> counts(is_root() ? W : 0), displs(is_root() ? W : 0);
  MPI_Comm comm = host_world_->comm();
  MPI_Request req = MPI_REQUEST_NULL;
  check_mpi(MPI_Igather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, comm, &req), "MPI_Igather", "world");
  host_world_->wait(req, "MPI_Igather");
  std::vector<float> recv;
  if (is_root()) {
    int64_t total = 0;
    for (int r = 0; r < W; ++r) displs[r] = static_cast<int>(total), total += counts[r];
    recv.resize(total);
  }
  check_mpi(MPI_Igatherv(mine.data(), n, MPI_FLOAT, recv.data(), counts.data(), displs.data(), MPI_FLOAT, 0, comm,
                         &req),
            "MPI_Igatherv", "world");
  host_world_->wait(req, "MPI_Igatherv");
  if (!is_root()) return {};

  // Root: rebuild each tp rank's local view from its DP ranks' pieces, then place it in the full tensor.
  std::vector<float> full(full_numel(v));
  for (int t = 0; t < topo_.tp; ++t) {
    const ParamView& vt = tp_layout(t).at(name);
    std::vector<float> local(vt.numel);
    for (int d = 0; d < topo_.dp; ++d) {
      const float* src = recv.data() + displs[topo_.world_rank_of(d, t)];
      if (!sh) {
        if (d == 0) std::copy_n(src, vt.numel, local.begin());
        continue;
      }
      for (const auto& sp : plan_.spans(d, vt.offset, vt.offset + vt.numel)) {
        std::copy_n(src, sp.end - sp.begin, local.begin() + (sp.begin - vt.offset));
        src += sp.end - sp.begin;
      }
    }
    place_into_full(full.data(), local.data(), vt);
  }
  return full;
}

void DistributedContext::scatter_tensor(Model& model, AdamW& opt, const std::string& name, StateKind kind,
                                        const std::vector<float>& full) {
  adopt(model, &opt);
  if (&opt != opt_) throw Error("scatter_tensor: not this context's optimizer");
  finish_param_gathers();
  const ParamView& v = model.layout().at(name);
  const std::vector<float> local = local_slice(v, full);
  if (!sharded()) return write_view(model, opt, v, kind, local.data());
  if (kind == StateKind::master) write_view(model, opt, v, kind, local.data());  // the compute copy
  float* base = kind == StateKind::master ? master_shard_ : kind == StateKind::adam_m ? opt.m() : opt.v();
  for (const auto& sp : plan_.spans(topo_.dp_rank, v.offset, v.offset + v.numel))
    be_.upload(base + sp.local, local.data() + (sp.begin - v.offset), (sp.end - sp.begin) * sizeof(float));
}

}  // namespace mlkv::parallel
