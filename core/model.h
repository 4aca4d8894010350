// Model: GPT-NeoX (Pythia) with an MLKV KV plan — the layer sequencing, forward and backward,
// written once against the Backend op interface (core/backend.h) for every device.
//
// Per layer (parallel residual, DESIGN §2):
//   x_{l+1} = x_l + dense(attn(rope(q_l), K_o, V_o)) + down(gelu(up(ln2(x_l))))
// where q_l comes from layer l's own projection of ln1(x_l) and K_o, V_o were written once by
// the owner o = plan.owner[l] (post-rotary unless plan.rope_shared_keys is false).
// The backward runs from the top, so every reader of a group finishes before its owner; the
// group's dK/dV accumulate in one fp32 buffer that the owner then sends through its rotary and
// projection backward exactly once (DESIGN §3b).
//
// Tensor parallelism (ModelParallel::tp > 1, layout from ParamLayout(spec, tp, rank)): each rank
// runs its H/tp query heads (and their KV heads) and ffn/tp MLP columns. The parallel residual
// lets the attention dense and MLP down partial sums share ONE all-reduce per layer in the
// forward; the backward all-reduces the two LayerNorm input gradients, the MLP's overlapped with
// the attention branch's backward.
// Embeddings and the cross-entropy are vocab-parallel. tp = 1 runs exactly the code it always did.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/backend.h"
#include "core/model_spec.h"
#include "core/param_layout.h"

namespace mlkv {
namespace parallel {
class Communicator;
}

enum class Recompute { none, block };
Recompute parse_recompute(const std::string& s);  // "none" | "block" (ConfigError otherwise)

struct LossSum {
  double sum = 0;     // Σ of per-token losses over non-ignored targets
  int64_t count = 0;  // number of non-ignored targets
};

// How this rank's model is cut; parallel::Context::model_parallel() fills it in.
struct ModelParallel {
  int tp = 1, tp_rank = 0;
  parallel::Communicator* tp_comm = nullptr;  // the tensor-parallel group (required when tp > 1)
  int64_t buffer_multiple = 64;  // grads/params buffers are padded to a multiple (ZeRO-1 buckets)
};

class Model {
 public:
  // Allocates parameters and gradients for micro-batches of B sequences of T tokens; the
  // activations follow at the first forward (after ZeRO-1 has freed the full master).
  Model(const ModelSpec& spec, Backend& backend, int B, int T, Recompute recompute = Recompute::none,
        const ModelParallel& par = {});
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelSpec& spec() const { return spec_; }
  const ParamLayout& layout() const { return layout_; }
  Backend& backend() { return be_; }
  int batch() const { return B_; }
  int seq_len() const { return T_; }

  const ModelParallel& parallel() const { return par_; }

  // fp32 master weights and gradients, device memory, ParamLayout order; length layout().total()
  // (buffers are buffer_elems() long: zero padding past total()). master() is null when the
  // master has been dropped (ZeRO-1 on a bf16 backend keeps it sharded in parallel::Context).
  float* master() { return master_; }
  float* grads() { return grads_; }
  void* compute_params() { return params_; }  // compute-dtype copy (the master itself on the CPU)
  int64_t buffer_elems() const { return buffer_elems_; }
  // Uploads (this rank's local layout) and refreshes the compute copy; then tells the listener.
  void set_master(const std::vector<float>& host);
  std::vector<float> get_master() const;  // throws when the master is sharded (use the Context)
  std::vector<float> get_grads() const;
  void refresh_compute_params();  // after the master changed on the device
  void zero_grads();
  // Frees the full fp32 master when it is not the compute copy (bf16 backends); later
  // set_master calls still refresh the compute copy and the listener.
  void drop_master();

  // Called by set_master with the new fp32 master (device memory, valid during the call), so a
  // sharded optimizer state can take its slice.
  void set_master_listener(std::function<void(const float* master_dev)> f) { master_listener_ = std::move(f); }
  // While set, called during forward_backward whenever the gradients at buffer offsets
  // >= ready_from have received this micro-batch's last contribution (top of the model first;
  // 0 at the end): data parallelism starts reducing those buckets while the backward goes on.
  void set_grad_ready_hook(std::function<void(int64_t ready_from)> f) { grad_ready_ = std::move(f); }
  // While set, called by the forward before each stage (embedding, each layer, the head) reads
  // its parameters: the compute copy must be valid below buffer offset `need` now, and the next
  // stage reads below `ahead`. ZeRO-1 all-gathers the updated weights this way, overlapped with
  // the forward. The hook may clear itself.
  void set_params_needed_hook(std::function<void(int64_t need, int64_t ahead)> f) { params_needed_ = std::move(f); }

  // One micro-batch: tokens[B, T] inputs, targets[B, T] (negative = ignored), host memory.
  // forward_backward adds dloss·∂(Σ losses)/∂θ into grads() and returns the loss sum.
  LossSum forward_backward(const int32_t* tokens, const int32_t* targets, float dloss);
  LossSum forward_loss(const int32_t* tokens, const int32_t* targets);
  // Logits [B, T, V] as fp32 on the host (for parity checks and mlkv-eval dumps).
  std::vector<float> forward_logits(const int32_t* tokens);

  // The LM head and its cross-entropy run over this many rows at a time (see head_loss), so the
  // full [B·T, V] logits never exist; 0 = all rows at once (the unfused path, for tests). Only
  // before the first forward: the chunk's logits buffer is allocated there.
  static constexpr int64_t kDefaultHeadChunkRows = 4096;
  void set_head_chunk_rows(int64_t rows);
  int64_t head_chunk_rows() const;  // the rows one chunk takes at this micro-batch

  size_t activation_bytes() const { return activation_bytes_; }  // 0 until the first forward

 private:
  struct LayerActs;  // what one layer's forward saves for its backward
  // The per-rank sizes of layer l that its forward and backward both need.
  struct LayerShape {
    int64_t N;                 // tokens in the micro-batch, B·T
    int d, hd, H, KVH, F, o;   // d_model, head dim, local q heads, local KV heads, local ffn, owner
    bool owner, shared_rot;    // l owns its K/V; K is stored post-rotary (rope_shared_keys)
    float base;                // rotary base
  };
  LayerShape layer_shape(int l) const;
  void* p(int view);  // compute-dtype pointer of a parameter view
  float* g(int view);  // fp32 gradient of a parameter view
  void forward(const int32_t* tokens_dev);
  void layer_forward(int l, LayerActs& a);
  void layer_backward(int l, LayerActs& a);
  LossSum head_loss(const int32_t* targets, float dloss, bool compute_grad);
  void chunk_cross_entropy(int64_t r0, int64_t n, float dloss, bool compute_grad);
  void* act_row(void* base, int64_t row, int64_t width);  // &base[row, 0] of an act [*, width]
  void allocate_activations();
  void* alloc_act(int64_t elems);
  float* alloc_f32(int64_t elems);
  void upload_tokens(const int32_t* tokens);
  void tp_all_reduce(void* buf, int64_t elems);
  void column_parallel_backward(void* din, float* dw, float* dbias, const void* dout, const void* in, const void* w,
                                int64_t N, int IC, int OC);
  void grads_ready(int64_t from) {
    if (grad_ready_) grad_ready_(from);
  }
  int64_t stage_end(int stage) const;  // buffer offset where forward stage 0 … L + 1's params end
  void params_needed(int stage);

  ModelSpec spec_;
  ModelParallel par_;
  ParamLayout layout_;
  Backend& be_;
  int B_, T_;
  Recompute recompute_;
  int64_t head_chunk_rows_ = kDefaultHeadChunkRows;
  int64_t buffer_elems_ = 0;
  std::function<void(const float*)> master_listener_;
  std::function<void(int64_t)> grad_ready_;
  std::function<void(int64_t, int64_t)> params_needed_;
  std::vector<int32_t> local_tokens_;  // tp > 1: token ids relative to this rank's vocab rows
  float *ce_max_ = nullptr, *ce_sums_ = nullptr;  // tp > 1: vocab-parallel cross-entropy stats (one chunk)
  std::vector<void*> allocations_;
  size_t activation_bytes_ = 0;

  float* master_ = nullptr;
  float* grads_ = nullptr;
  void* params_ = nullptr;
  int32_t* tokens_ = nullptr;   // device [B, T]
  int32_t* targets_ = nullptr;  // device [B, T]

  std::vector<void*> resid_;                // x_0 … x_L, act [N, d]
  std::vector<std::unique_ptr<LayerActs>> layer_acts_;  // per layer, or one shared (recompute)
  std::vector<void*> k_, v_;                // per owner layer: act [B, KVH, T, hd]
  void *lnf_out_ = nullptr, *logits_ = nullptr;  // logits_: one head chunk [head_chunk_rows(), local V]
  float *lnf_mean_ = nullptr, *lnf_rstd_ = nullptr, *losses_ = nullptr;
  // backward scratch
  void *dresid_ = nullptr, *dln1_ = nullptr, *dln2_ = nullptr, *dqkv_ = nullptr, *dq_ = nullptr,
       *dattn_ = nullptr, *dh_ = nullptr;
  float *dk_acc_ = nullptr, *dv_acc_ = nullptr, *dk_own_ = nullptr;
};

}  // namespace mlkv
