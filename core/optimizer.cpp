// AdamW, clipping and the learning-rate schedule.
#include "core/optimizer.h"

#include <cmath>

#include "core/errors.h"

namespace mlkv {

int64_t warmup_steps(const OptimSection& o, int64_t total_steps) {
  if (o.warmup_steps >= 0) return o.warmup_steps;
  return static_cast<int64_t>(std::llround(o.warmup_fraction * static_cast<double>(total_steps)));
}

double lr_at(const OptimSection& o, int64_t step, int64_t total_steps) {
  const int64_t warm = warmup_steps(o, total_steps);
  if (step < warm) return o.lr * static_cast<double>(step + 1) / static_cast<double>(warm);
  const double min_lr = o.lr * o.min_lr_ratio;
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - warm);
  const double progress = std::min(1.0, static_cast<double>(step - warm) / static_cast<double>(decay_steps));
  if (o.schedule == "constant") return o.lr;
  if (o.schedule == "linear") return o.lr - (o.lr - min_lr) * progress;
  return min_lr + 0.5 * (o.lr - min_lr) * (1.0 + std::cos(M_PI * progress));  // cosine
}

AdamW::AdamW(Backend& backend, const ParamLayout& layout, const OptimSection& opt)
    : be_(backend), layout_(layout), opt_(opt) {
  m_ = static_cast<float*>(be_.alloc(layout_.total() * sizeof(float)));
  v_ = static_cast<float*>(be_.alloc(layout_.total() * sizeof(float)));
}

AdamW::~AdamW() {
  be_.release(m_);
  be_.release(v_);
}

UpdateStats AdamW::step(float* master, void* compute_params, const float* grads, double lr, double grad_norm_sq) {
  UpdateStats st;
  if (grad_norm_sq < 0) grad_norm_sq = be_.sum_squares(grads, layout_.total());
  st.grad_norm = std::sqrt(grad_norm_sq);
  if (!std::isfinite(st.grad_norm)) {
    st.skipped = true;
    return st;
  }
  if (opt_.grad_clip > 0 && st.grad_norm > opt_.grad_clip) st.clip_scale = opt_.grad_clip / st.grad_norm;
  ++t_;
  AdamwStep s;
  s.lr = static_cast<float>(lr);
  s.beta1 = static_cast<float>(opt_.beta1);
  s.beta2 = static_cast<float>(opt_.beta2);
  s.eps = static_cast<float>(opt_.eps);
  s.t = t_;
  s.grad_scale = static_cast<float>(st.clip_scale);
  const int64_t act_bytes = be_.act_bytes();
  for (const ParamView& v : layout_.views()) {
    s.weight_decay = v.decay ? static_cast<float>(opt_.weight_decay) : 0.0f;
    void* act = compute_params ? static_cast<char*>(compute_params) + v.offset * act_bytes : nullptr;
    be_.adamw_update(master + v.offset, act, grads + v.offset, m_ + v.offset, v_ + v.offset, v.numel, s);
  }
  return st;
}

std::vector<float> AdamW::get_m() const { return be_.download_f32(m_, layout_.total()); }
std::vector<float> AdamW::get_v() const { return be_.download_f32(v_, layout_.total()); }

void AdamW::set_moments(const std::vector<float>& m, const std::vector<float>& v) {
  const size_t n = static_cast<size_t>(layout_.total());
  if (m.size() != n || v.size() != n)
    throw CheckpointError("optimizer moments have " + std::to_string(m.size()) + "/" + std::to_string(v.size()) +
                          " elements, the model needs " + std::to_string(n));
  be_.upload(m_, m.data(), n * sizeof(float));
  be_.upload(v_, v.data(), n * sizeof(float));
}

}  // namespace mlkv
