// Model forward/backward orchestration (see model.h for the shape of the computation).
#include "core/model.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"
#include "parallel/communicator.h"
#include "parallel/tp_ops.h"

namespace mlkv {

Recompute parse_recompute(const std::string& s) {
  if (s == "none") return Recompute::none;
  if (s == "block") return Recompute::block;
  throw ConfigError("train.recompute = \"" + s + "\": choices are none, block");
}

// Activations of one layer that its backward reads. With Recompute::block all layers share one
// set and each layer's forward is re-run just before its backward; K/V live per owner either way
// (they are the group's shared state, saved once per group — an MLKV training-memory win).
struct Model::LayerActs {
  void *ln1 = nullptr, *ln2 = nullptr;   // [N, d]
  float *ln_mean = nullptr, *ln_rstd = nullptr;  // [N]: ln1 and ln2 normalise the same x
  void* qkv = nullptr;                   // [N, (H + 2·KVH)·hd]
  void* q = nullptr;                     // [B, H, T, hd]
  void* k_rot = nullptr;                 // [B, KVH, T, hd], owner in rope_shared_keys=false mode
  void* attn = nullptr;                  // [N, H·hd]
  float* lse = nullptr;                  // [B, H, T]
  void *h = nullptr, *gelu = nullptr;    // [N, ffn]
};

void* Model::alloc_act(int64_t elems) {
  const size_t bytes = static_cast<size_t>(elems) * be_.act_bytes();
  allocations_.push_back(be_.alloc(bytes));
  activation_bytes_ += bytes;
  return allocations_.back();
}

float* Model::alloc_f32(int64_t elems) {
  allocations_.push_back(be_.alloc(static_cast<size_t>(elems) * sizeof(float)));
  activation_bytes_ += static_cast<size_t>(elems) * sizeof(float);
  return static_cast<float*>(allocations_.back());
}

static const ModelSpec& validated(const ModelSpec& s) {
  s.validate("model");
  return s;
}

Model::Model(const ModelSpec& spec, Backend& backend, int B, int T, Recompute recompute, const ModelParallel& par)
    : spec_(validated(spec)), par_(par), layout_(spec_, par.tp, par.tp_rank), be_(backend), B_(B), T_(T),
      recompute_(recompute) {
  if (T > spec_.max_seq_len)
    throw ConfigError("train.seq_len = " + std::to_string(T) + " exceeds model.max_seq_len = " +
                      std::to_string(spec_.max_seq_len));
  if (par_.tp > 1 && (!par_.tp_comm || par_.tp_comm->size() != par_.tp))
    throw Error("model: tensor parallelism over " + std::to_string(par_.tp) + " ranks needs their communicator");
  // Under tensor parallelism every size below is this rank's share (ParamLayout's local sizes).
  const int64_t N = int64_t{B} * T, P = layout_.total();
  const int64_t m = std::max<int64_t>(1, par_.buffer_multiple);
  buffer_elems_ = (P + m - 1) / m * m;
  const bool fp32 = be_.act_bytes() == 4;  // then the master is the compute copy
  master_ = static_cast<float*>(be_.alloc(buffer_elems_ * sizeof(float)));
  grads_ = static_cast<float*>(be_.alloc(buffer_elems_ * sizeof(float)));
  params_ = fp32 ? static_cast<void*>(master_) : be_.alloc(buffer_elems_ * be_.act_bytes());
  tokens_ = static_cast<int32_t*>(be_.alloc(N * sizeof(int32_t)));
  targets_ = static_cast<int32_t*>(be_.alloc(N * sizeof(int32_t)));
}

// Activations are allocated at the first forward, not in the constructor: by then ZeRO-1 has
// sharded the fp32 master and freed the full one, so the activations reuse its memory and the
// peak holds 1/dp of the master instead of all of it.
void Model::allocate_activations() {
  const int64_t N = int64_t{B_} * T_, B = B_, T = T_, d = spec_.d_model, hd = spec_.head_dim(),
                H = layout_.local_heads(), KVH = layout_.local_kv_heads(), L = spec_.layers, F = layout_.local_ffn();
  activation_bytes_ = 0;
  for (int l = 0; l <= L; ++l) resid_.push_back(alloc_act(N * d));
  k_.assign(L, nullptr);
  v_.assign(L, nullptr);
  for (int o : spec_.kv.owners()) {
    k_[o] = alloc_act(B * KVH * T * hd);
    v_[o] = alloc_act(B * KVH * T * hd);
  }
  const int acts_sets = recompute_ == Recompute::block ? 1 : static_cast<int>(L);
  for (int i = 0; i < acts_sets; ++i) {
    auto a = std::make_unique<LayerActs>();
    a->ln1 = alloc_act(N * d);
    a->ln2 = alloc_act(N * d);
    a->ln_mean = alloc_f32(N);
    a->ln_rstd = alloc_f32(N);
    a->qkv = alloc_act(N * (H + 2 * KVH) * hd);
    a->q = alloc_act(N * H * hd);
    if (!spec_.kv.rope_shared_keys) a->k_rot = alloc_act(B * KVH * T * hd);
    a->attn = alloc_act(N * H * hd);
    a->lse = alloc_f32(int64_t{B} * H * T);
    a->h = alloc_act(N * F);
    a->gelu = alloc_act(N * F);
    layer_acts_.push_back(std::move(a));
  }
  lnf_out_ = alloc_act(N * d);
  lnf_mean_ = alloc_f32(N);
  lnf_rstd_ = alloc_f32(N);
  const int64_t head_rows = head_chunk_rows();
  logits_ = alloc_act(head_rows * layout_.local_vocab());
  losses_ = alloc_f32(N);
  dresid_ = alloc_act(N * d);
  dln1_ = alloc_act(N * d);
  dln2_ = alloc_act(N * d);
  dqkv_ = alloc_act(N * (H + 2 * KVH) * hd);
  dq_ = alloc_act(N * H * hd);
  dattn_ = alloc_act(N * H * hd);
  dh_ = alloc_act(N * F);
  dk_acc_ = alloc_f32(B * KVH * T * hd);
  dv_acc_ = alloc_f32(B * KVH * T * hd);
  if (!spec_.kv.rope_shared_keys) dk_own_ = alloc_f32(B * KVH * T * hd);
  if (par_.tp > 1) {
    ce_max_ = alloc_f32(head_rows);
    ce_sums_ = alloc_f32(2 * head_rows);
    local_tokens_.resize(N);
  }
}

Model::~Model() {
  for (void* a : allocations_) be_.release(a);
  if (params_ != master_) be_.release(params_);
  if (master_) be_.release(master_);
  be_.release(grads_);
  be_.release(tokens_);
  be_.release(targets_);
}

void* Model::p(int view) {
  return static_cast<char*>(params_) + layout_.views()[view].offset * be_.act_bytes();
}
float* Model::g(int view) { return grads_ + layout_.views()[view].offset; }

void Model::set_master(const std::vector<float>& host) {
  if (static_cast<int64_t>(host.size()) != layout_.total())
    throw CheckpointError("parameter vector has " + std::to_string(host.size()) + " elements, model needs " +
                          std::to_string(layout_.total()));
  const float* src = host.data();
  std::vector<float> cleaned;
  if (layout_.embed_scratch_offset() >= 0) {  // the vocab-parallel embedding's zero row must be zero
    cleaned = host;
    std::fill_n(cleaned.begin() + layout_.embed_scratch_offset(), spec_.d_model, 0.0f);
    src = cleaned.data();
  }
  const size_t bytes = host.size() * sizeof(float);
  if (master_) {
    be_.upload(master_, src, bytes);
    refresh_compute_params();
    if (master_listener_) master_listener_(master_);
    return;
  }
  float* tmp = static_cast<float*>(be_.alloc(bytes));
  be_.upload(tmp, src, bytes);
  be_.cast_f32_to_act(params_, tmp, layout_.total());
  if (master_listener_) master_listener_(tmp);
  be_.release(tmp);
}

std::vector<float> Model::get_master() const {
  if (!master_)
    throw Error("the fp32 master weights are sharded across data-parallel ranks (ZeRO-1): gather them with "
                "parallel::Context::gather_tensor");
  return be_.download_f32(master_, layout_.total());
}

std::vector<float> Model::get_grads() const { return be_.download_f32(grads_, layout_.total()); }

void Model::refresh_compute_params() {
  if (master_ && params_ != master_) be_.cast_f32_to_act(params_, master_, layout_.total());
}

void Model::drop_master() {
  if (!master_ || params_ == master_) return;
  be_.release(master_);
  master_ = nullptr;
}

void Model::zero_grads() { be_.zero(grads_, buffer_elems_ * sizeof(float)); }

void Model::tp_all_reduce(void* buf, int64_t elems) {
  par_.tp_comm->all_reduce(buf, elems, parallel::act_dtype(be_.act_bytes()), parallel::ReduceOp::sum);
}

Model::LayerShape Model::layer_shape(int l) const {
  const int o = spec_.kv.owner[l];
  return {int64_t{B_} * T_, spec_.d_model, spec_.head_dim(), layout_.local_heads(), layout_.local_kv_heads(),
          layout_.local_ffn(), o, o == l, spec_.kv.rope_shared_keys, static_cast<float>(spec_.rotary_base)};
}

void Model::layer_forward(int l, LayerActs& a) {
  const ModelSpec& s = spec_;
  const LayerParams& lp = layout_.layer(l);
  const auto [N, d, hd, H, KVH, F, o, owner, shared_rot, base] = layer_shape(l);
  const int KVH_l = owner ? KVH : 0;
  void* x = resid_[l];
  void* y = resid_[l + 1];
  const float eps = static_cast<float>(s.ln_eps);

  be_.layernorm_pair_forward(a.ln1, a.ln2, a.ln_mean, a.ln_rstd, x, p(lp.ln1_w), p(lp.ln1_b), p(lp.ln2_w),
                             p(lp.ln2_b), N, d, eps);
  // attention branch: only owners project K/V; everyone reads the owner's buffers
  be_.matmul_forward(a.qkv, a.ln1, p(lp.qkv_w), p(lp.qkv_b), N, d, layout_.qkv_rows(l), false);
  be_.qkv_split_rope_forward(a.q, k_[l], v_[l], a.qkv, B_, T_, H, KVH_l, hd, s.rot_dims(), base, shared_rot);
  const void* k_use = k_[o];
  if (owner && !shared_rot) {  // seed-paper compatibility: the owner alone attends to rotated K
    be_.rope_forward(a.k_rot, k_[o], int64_t{B_} * KVH, T_, hd, s.rot_dims(), base);
    k_use = a.k_rot;
  }
  be_.attention_forward(a.attn, a.lse, a.q, k_use, v_[o], B_, T_, H, KVH, hd);
  if (par_.tp == 1) {
    be_.matmul_forward(y, a.attn, p(lp.dense_w), p(lp.dense_b), N, H * hd, d, false);
    // MLP branch, added onto the same output, then the residual
    be_.matmul_forward(a.h, a.ln2, p(lp.up_w), p(lp.up_b), N, d, F, false);
    be_.gelu_forward(a.gelu, a.h, N * F);
    be_.matmul_forward(y, a.gelu, p(lp.down_w), p(lp.down_b), N, F, d, true);
    be_.add_inplace(y, x, N * d);
    return;
  }
  // RowParallelLinear ×2: both partial sums land in y, one all-reduce, then biases + residual.
  // (Splitting the rows so one chunk's all-reduce overlaps the next chunk's GEMMs measured no
  // faster on 2 × H200 at 1B: 2 chunks the same, 4 chunks 1.5% slower.)
  be_.matmul_forward(y, a.attn, p(lp.dense_w), nullptr, N, H * hd, d, false);
  be_.matmul_forward(a.h, a.ln2, p(lp.up_w), p(lp.up_b), N, d, F, false);  // ColumnParallelLinear
  be_.gelu_forward(a.gelu, a.h, N * F);
  be_.matmul_forward(y, a.gelu, p(lp.down_w), nullptr, N, F, d, true);
  tp_all_reduce(y, N * d);
  parallel::add_residual_biases(be_, y, x, p(lp.dense_b), p(lp.down_b), N, d);
}

// A column-parallel layer's backward at tp > 1: every rank holds a partial din, whose all-reduce
// (side queue) runs while the weight gradient computes. The caller waits (compute_wait_side)
// before it reads din. At tp = 1 it is matmul_backward.
void Model::column_parallel_backward(void* din, float* dw, float* dbias, const void* dout, const void* in,
                                     const void* w, int64_t N, int IC, int OC) {
  if (par_.tp == 1) {
    be_.matmul_backward(din, dw, dbias, dout, in, w, N, IC, OC, false);
    return;
  }
  be_.matmul_backward(din, nullptr, nullptr, dout, in, w, N, IC, OC, false);
  par_.tp_comm->side_wait_compute();
  par_.tp_comm->all_reduce(din, N * IC, parallel::act_dtype(be_.act_bytes()), parallel::ReduceOp::sum,
                           parallel::Queue::side);
  be_.matmul_backward(nullptr, dw, dbias, dout, in, w, N, IC, OC, false);
}

// On entry dresid_ holds ∂loss/∂x_{l+1}; on exit ∂loss/∂x_l (the identity path keeps it, the
// two LayerNorm backwards add onto it).
void Model::layer_backward(int l, LayerActs& a) {
  const ModelSpec& s = spec_;
  const LayerParams& lp = layout_.layer(l);
  const auto [N, d, hd, H, KVH, F, o, owner, shared_rot, base] = layer_shape(l);
  const int64_t kv_elems = int64_t{B_} * KVH * T_ * hd;
  void* x = resid_[l];

  // MLP branch
  be_.matmul_backward(dh_, g(lp.down_w), g(lp.down_b), dresid_, a.gelu, p(lp.down_w), N, F, d, false);
  // The up-projection's bias gradient is summed with the GELU backward (one read of dh_ fewer).
  be_.gelu_backward_bias(dh_, g(lp.up_b), a.h, dh_, N, F);
  // Column-parallel: the partial dln2's all-reduce also overlaps the whole attention backward.
  column_parallel_backward(dln2_, g(lp.up_w), nullptr, dh_, a.ln2, p(lp.up_w), N, d, F);
  // attention branch
  be_.matmul_backward(dattn_, g(lp.dense_w), g(lp.dense_b), dresid_, a.attn, p(lp.dense_w), N, H * hd, d, false);
  // The first layer of this group the backward reaches assigns the group's dK/dV sums (no
  // zeroing pass), the others add to them. An owner with its own rotated K (seed-paper plans)
  // takes this layer's dK alone in dk_own_ and adds its un-rotation to the group's sum.
  const bool accumulate = l != s.kv.group_top(o);
  const bool own_rot = owner && !shared_rot;
  if (own_rot && accumulate) be_.zero(dk_own_, kv_elems * sizeof(float));
  if (own_rot && !accumulate) be_.zero(dk_acc_, kv_elems * sizeof(float));
  be_.attention_backward(dq_, own_rot ? dk_own_ : dk_acc_, dv_acc_, dattn_, a.q, own_rot ? a.k_rot : k_[o], v_[o],
                         a.attn, a.lse, B_, T_, H, KVH, hd, accumulate);
  if (own_rot) be_.rope_backward_accumulate(dk_acc_, dk_own_, int64_t{B_} * KVH, T_, hd, s.rot_dims(), base);
  // Owners hand the group's summed dK/dV to their projection; readers pass only dQ.
  be_.qkv_split_rope_backward(dqkv_, dq_, dk_acc_, dv_acc_, B_, T_, H, owner ? KVH : 0, hd, s.rot_dims(), base,
                              shared_rot);
  if (par_.tp > 1) par_.tp_comm->compute_wait_side();  // dln2 (reduced under the attention backward)
  // Partial dln1 likewise (its heads; a replicated K/V head's partial dK·Wk sums to the full one);
  // at tp > 1 its all-reduce overlaps the QKV weight gradient and the ln2 backward.
  column_parallel_backward(dln1_, g(lp.qkv_w), g(lp.qkv_b), dqkv_, a.ln1, p(lp.qkv_w), N, d, layout_.qkv_rows(l));
  if (par_.tp == 1) {  // both branch gradients are here: one pass over x for the two LayerNorms
    be_.layernorm_pair_backward(dresid_, g(lp.ln1_w), g(lp.ln1_b), g(lp.ln2_w), g(lp.ln2_b), dln1_, dln2_, x,
                                p(lp.ln1_w), p(lp.ln2_w), a.ln_mean, a.ln_rstd, N, d);
    return;
  }
  be_.layernorm_backward(dresid_, g(lp.ln2_w), g(lp.ln2_b), dln2_, x, p(lp.ln2_w), a.ln_mean, a.ln_rstd, N, d);
  par_.tp_comm->compute_wait_side();
  be_.layernorm_backward(dresid_, g(lp.ln1_w), g(lp.ln1_b), dln1_, x, p(lp.ln1_w), a.ln_mean, a.ln_rstd, N, d);
}

void Model::forward(const int32_t* tokens) {
  const int64_t N = int64_t{B_} * T_;
  for (int64_t i = 0; i < N; ++i)
    if (tokens[i] < 0 || tokens[i] >= spec_.vocab)
      throw DataError("token id " + std::to_string(tokens[i]) + " at batch position " + std::to_string(i) +
                      " is outside the vocabulary [0, " + std::to_string(spec_.vocab) + ")");
  if (resid_.empty()) allocate_activations();
  upload_tokens(tokens);
  params_needed(0);
  be_.embedding_forward(resid_[0], tokens_, p(layout_.embed_in()), N, spec_.d_model);
  if (par_.tp > 1) tp_all_reduce(resid_[0], N * spec_.d_model);  // vocab-parallel: one rank had each row
  for (int l = 0; l < spec_.layers; ++l) {
    params_needed(l + 1);
    layer_forward(l, *layer_acts_[recompute_ == Recompute::block ? 0 : l]);
  }
  params_needed(spec_.layers + 1);
  be_.layernorm_forward(lnf_out_, lnf_mean_, lnf_rstd_, resid_[spec_.layers], p(layout_.final_ln_w()),
                        p(layout_.final_ln_b()), N, spec_.d_model, static_cast<float>(spec_.ln_eps));
  // The LM head runs in head_loss / forward_logits, chunk by chunk.
}

// Forward stages in buffer order (ParamLayout: embed_in, layers 0 … L − 1, final LN + embed_out).
int64_t Model::stage_end(int stage) const {
  const auto end = [this](int view) { return layout_.views()[view].offset + layout_.views()[view].numel; };
  if (stage == 0) return end(layout_.embed_in());
  if (stage <= spec_.layers) return end(layout_.layer(stage - 1).down_b);
  return buffer_elems_;
}

void Model::params_needed(int stage) {
  if (!params_needed_) return;
  const auto hook = params_needed_;  // a copy: the hook may clear params_needed_
  hook(stage_end(stage), stage_end(std::min(stage + 1, spec_.layers + 1)));
}

// tp > 1: ids of other ranks' vocabulary rows point at the zero scratch row after embed_in.
void Model::upload_tokens(const int32_t* tokens) {
  const int64_t N = int64_t{B_} * T_;
  if (par_.tp == 1) {
    be_.upload(tokens_, tokens, N * sizeof(int32_t));
    return;
  }
  const int64_t v0 = layout_.vocab_begin(), Vl = layout_.local_vocab();
  for (int64_t i = 0; i < N; ++i)
    local_tokens_[i] = static_cast<int32_t>(tokens[i] >= v0 && tokens[i] < v0 + Vl ? tokens[i] - v0 : Vl);
  be_.upload(tokens_, local_tokens_.data(), N * sizeof(int32_t));
}

void Model::set_head_chunk_rows(int64_t rows) {
  if (rows < 0) throw ConfigError("model: head chunk rows must be >= 0 (0 = all rows), got " + std::to_string(rows));
  if (!resid_.empty())
    throw Error("model: the head chunk is sized at the first forward; set it before (asked for " +
                std::to_string(rows) + " rows)");
  head_chunk_rows_ = rows;
}

int64_t Model::head_chunk_rows() const {
  const int64_t N = int64_t{B_} * T_;
  return head_chunk_rows_ == 0 ? N : std::min(head_chunk_rows_, N);
}

void* Model::act_row(void* base, int64_t row, int64_t width) {
  return static_cast<char*>(base) + row * width * be_.act_bytes();
}

// Rows [r0, r0 + n) of the loss from the chunk's logits in logits_ (replaced by dloss·∂loss/∂logits
// with compute_grad). Vocab-parallel at tp > 1: agree on each row's max, then on its Σexp and
// target logit; the chunk's statistics are what cross the ranks.
void Model::chunk_cross_entropy(int64_t r0, int64_t n, float dloss, bool compute_grad) {
  if (par_.tp == 1) {
    be_.cross_entropy(losses_ + r0, logits_, targets_ + r0, n, spec_.vocab, dloss, compute_grad);
    return;
  }
  const int64_t Vl = layout_.local_vocab(), v0 = layout_.vocab_begin();
  parallel::ce_local_max(be_, ce_max_, logits_, n, Vl);
  par_.tp_comm->all_reduce(ce_max_, n, parallel::DType::f32, parallel::ReduceOp::max);
  parallel::ce_local_sums(be_, ce_sums_, logits_, ce_max_, targets_ + r0, n, Vl, v0);
  par_.tp_comm->all_reduce(ce_sums_, 2 * n, parallel::DType::f32, parallel::ReduceOp::sum);
  parallel::ce_finish(be_, losses_ + r0, logits_, ce_max_, ce_sums_, targets_ + r0, n, Vl, v0, dloss, compute_grad);
}

// The fused LM head: per chunk of head_chunk_rows() rows, logits = lnf_out · embed_outᵀ, their
// cross-entropy, and (compute_grad) at once the chunk's backward: its rows of ∂lnf_out into dln1_
// and its term of ∂embed_out. So only one chunk's logits ever exist (at 160M, micro-batch 16:
// 0.4 GB instead of 3.3 GB). Chunk size: the fp32 ∂embed_out is read and written once per
// chunk (154 MB at 160M), so fewer, larger chunks cost memory, more, smaller ones bandwidth;
// 4096 rows keeps that traffic under 1% of the head's time.
// At tp > 1 each rank's ∂lnf_out rows are partial sums over its vocabulary rows: one all-reduce
// after the last chunk (not overlapped with the weight gradient any more: it is N·d, small
// against the head's GEMMs).
LossSum Model::head_loss(const int32_t* targets, float dloss, bool compute_grad) {
  const int64_t N = int64_t{B_} * T_, d = spec_.d_model, rows = head_chunk_rows();
  const int Vl = static_cast<int>(layout_.local_vocab());
  LossSum ls;
  for (int64_t i = 0; i < N; ++i) {
    if (targets[i] >= spec_.vocab)
      throw DataError("target id " + std::to_string(targets[i]) + " at batch position " + std::to_string(i) +
                      " is outside the vocabulary");
    ls.count += targets[i] >= 0;
  }
  be_.upload(targets_, targets, N * sizeof(int32_t));
  const void* w = p(layout_.embed_out());
  for (int64_t r0 = 0; r0 < N; r0 += rows) {
    const int64_t n = std::min(rows, N - r0);
    const void* x = act_row(lnf_out_, r0, d);
    be_.matmul_forward(logits_, x, w, nullptr, n, static_cast<int>(d), Vl, false);
    chunk_cross_entropy(r0, n, dloss, compute_grad);  // logits_ now holds ∂loss/∂logits
    if (compute_grad)
      be_.matmul_backward(act_row(dln1_, r0, d), g(layout_.embed_out()), nullptr, logits_, x, w, n,
                          static_cast<int>(d), Vl, false);
  }
  if (compute_grad && par_.tp > 1) tp_all_reduce(dln1_, N * d);
  ls.sum = be_.sum(losses_, N);
  return ls;
}

LossSum Model::forward_backward(const int32_t* tokens, const int32_t* targets, float dloss) {
  const int64_t N = int64_t{B_} * T_;
  const int d = spec_.d_model;
  forward(tokens);
  const LossSum ls = head_loss(targets, dloss, true);  // dln1_ now holds ∂loss/∂lnf_out
  be_.zero(dresid_, N * d * be_.act_bytes());
  be_.layernorm_backward(dresid_, g(layout_.final_ln_w()), g(layout_.final_ln_b()), dln1_, resid_[spec_.layers],
                         p(layout_.final_ln_w()), lnf_mean_, lnf_rstd_, N, d);
  grads_ready(layout_.views()[layout_.final_ln_w()].offset);
  for (int l = spec_.layers - 1; l >= 0; --l) {
    LayerActs& a = *layer_acts_[recompute_ == Recompute::block ? 0 : l];
    if (recompute_ == Recompute::block) layer_forward(l, a);
    layer_backward(l, a);
    grads_ready(layout_.views()[layout_.layer(l).ln1_w].offset);
  }
  if (par_.tp == 1) {
    be_.embedding_backward(g(layout_.embed_in()), dresid_, tokens_, N, d, spec_.vocab);
  } else {  // other ranks' tokens land in the scratch row, which is then cleared
    be_.embedding_backward(g(layout_.embed_in()), dresid_, tokens_, N, d, layout_.local_vocab() + 1);
    be_.zero(grads_ + layout_.embed_scratch_offset(), d * sizeof(float));
  }
  grads_ready(0);
  return ls;
}

LossSum Model::forward_loss(const int32_t* tokens, const int32_t* targets) {
  forward(tokens);
  return head_loss(targets, 0.0f, false);
}

// The head chunk by chunk (as in head_loss), each chunk's logits cast and downloaded into the
// [N, V] host rows; at tp > 1 every rank's vocabulary columns of the chunk are gathered first.
std::vector<float> Model::forward_logits(const int32_t* tokens) {
  forward(tokens);
  const int64_t N = int64_t{B_} * T_, d = spec_.d_model, Vl = layout_.local_vocab(), tp = par_.tp,
                rows = head_chunk_rows();
  std::vector<float> out(N * Vl * tp);
  void* gathered = tp > 1 ? be_.alloc(rows * Vl * tp * be_.act_bytes()) : nullptr;  // [tp, rows, Vl]
  float* tmp = static_cast<float*>(be_.alloc(rows * Vl * tp * sizeof(float)));
  std::vector<float> host;
  for (int64_t r0 = 0; r0 < N; r0 += rows) {
    const int64_t n = std::min(rows, N - r0), cols = Vl * tp;
    be_.matmul_forward(logits_, act_row(lnf_out_, r0, d), p(layout_.embed_out()), nullptr, n, static_cast<int>(d),
                       static_cast<int>(Vl), false);
    if (tp == 1) {
      be_.cast_act_to_f32(tmp, logits_, n * Vl);
      be_.download(out.data() + r0 * Vl, tmp, n * Vl * sizeof(float));
      continue;
    }
    par_.tp_comm->all_gather(gathered, logits_, n * Vl, parallel::act_dtype(be_.act_bytes()));
    be_.cast_act_to_f32(tmp, gathered, n * cols);
    host = be_.download_f32(tmp, n * cols);
    for (int64_t r = 0; r < tp; ++r)
      for (int64_t i = 0; i < n; ++i)
        std::copy_n(host.data() + (r * n + i) * Vl, Vl, out.data() + (r0 + i) * cols + r * Vl);
  }
  be_.release(tmp);
  if (gathered) be_.release(gathered);
  return out;
}

}  // namespace mlkv
