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
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/backend.h"
#include "core/model_spec.h"
#include "core/param_layout.h"

namespace mlkv {

enum class Recompute { none, block };
Recompute parse_recompute(const std::string& s);  // "none" | "block" (ConfigError otherwise)

struct LossSum {
  double sum = 0;     // Σ of per-token losses over non-ignored targets
  int64_t count = 0;  // number of non-ignored targets
};

class Model {
 public:
  // Allocates parameters, gradients and activations for micro-batches of B sequences of T tokens.
  Model(const ModelSpec& spec, Backend& backend, int B, int T, Recompute recompute = Recompute::none);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelSpec& spec() const { return spec_; }
  const ParamLayout& layout() const { return layout_; }
  Backend& backend() { return be_; }
  int batch() const { return B_; }
  int seq_len() const { return T_; }

  // fp32 master weights and gradients, device memory, ParamLayout order; length layout().total().
  float* master() { return master_; }
  float* grads() { return grads_; }
  void* compute_params() { return params_; }  // compute-dtype copy (the master itself on the CPU)
  void set_master(const std::vector<float>& host);  // uploads and refreshes the compute copy
  std::vector<float> get_master() const;
  std::vector<float> get_grads() const;
  void refresh_compute_params();  // after the master changed on the device
  void zero_grads();

  // One micro-batch: tokens[B, T] inputs, targets[B, T] (negative = ignored), host memory.
  // forward_backward adds dloss·∂(Σ losses)/∂θ into grads() and returns the loss sum.
  LossSum forward_backward(const int32_t* tokens, const int32_t* targets, float dloss);
  LossSum forward_loss(const int32_t* tokens, const int32_t* targets);
  // Logits [B, T, V] as fp32 on the host (for parity checks and mlkv-eval dumps).
  std::vector<float> forward_logits(const int32_t* tokens);

  size_t activation_bytes() const { return activation_bytes_; }

 private:
  struct LayerActs;  // what one layer's forward saves for its backward
  void* p(int view);  // compute-dtype pointer of a parameter view
  float* g(int view);  // fp32 gradient of a parameter view
  void forward(const int32_t* tokens_dev);
  void layer_forward(int l, LayerActs& a);
  void layer_backward(int l, LayerActs& a);
  LossSum loss(const int32_t* targets, float dloss, bool compute_grad);
  void* alloc_act(int64_t elems);
  float* alloc_f32(int64_t elems);

  ModelSpec spec_;
  ParamLayout layout_;
  Backend& be_;
  int B_, T_;
  Recompute recompute_;
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
  void *lnf_out_ = nullptr, *logits_ = nullptr;
  float *lnf_mean_ = nullptr, *lnf_rstd_ = nullptr, *losses_ = nullptr;
  // backward scratch
  void *dresid_ = nullptr, *dln1_ = nullptr, *dln2_ = nullptr, *dqkv_ = nullptr, *dq_ = nullptr,
       *dattn_ = nullptr, *dh_ = nullptr;
  float *dk_acc_ = nullptr, *dv_acc_ = nullptr, *dk_own_ = nullptr;
};

}  // namespace mlkv
