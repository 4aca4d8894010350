// AdamW with decoupled weight decay (none on biases and LayerNorm: ParamView::decay), global
// gradient-norm clipping, and the learning-rate schedule (linear warmup, then cosine decay to
// lr·min_lr_ratio — Pythia's recipe, DESIGN §2).
#pragma once
#include <cstdint>
#include <vector>

#include "core/backend.h"
#include "core/config.h"
#include "core/param_layout.h"

namespace mlkv {

// Learning rate for optimizer step `step` (0-based) of `total_steps`.
double lr_at(const OptimSection& o, int64_t step, int64_t total_steps);
int64_t warmup_steps(const OptimSection& o, int64_t total_steps);

struct UpdateStats {
  double grad_norm = 0;  // before clipping
  double clip_scale = 1;
  bool skipped = false;  // non-finite gradient norm: no update was made
};

class AdamW {
 public:
  AdamW(Backend& backend, const ParamLayout& layout, const OptimSection& opt);
  ~AdamW();
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  // Updates master (fp32) from grads and refreshes the compute copy. `grad_norm_sq` is Σ g² over
  // the whole model (callers with sharded gradients pass the all-reduced value; < 0 = compute here).
  UpdateStats step(float* master, void* compute_params, const float* grads, double lr, double grad_norm_sq = -1);

  int64_t t() const { return t_; }  // completed (not skipped) updates
  void set_t(int64_t t) { t_ = t; }
  float* m() { return m_; }
  float* v() { return v_; }
  std::vector<float> get_m() const;
  std::vector<float> get_v() const;
  void set_moments(const std::vector<float>& m, const std::vector<float>& v);

 private:
  Backend& be_;
  const ParamLayout& layout_;
  OptimSection opt_;
  float* m_ = nullptr;
  float* v_ = nullptr;
  int64_t t_ = 0;
};

}  // namespace mlkv
