// ParamLayout construction and Pythia initialisation.
#include "core/param_layout.h"

#include <cmath>

#include "core/errors.h"
#include "core/rng.h"

namespace mlkv {

// Views start at multiples of 64 elements so every tensor is 256-byte aligned in fp32 and
// 128-byte aligned in bf16: vector loads and cuBLASLt want aligned operands.
static constexpr int64_t kAlign = 64;

int ParamLayout::add(const std::string& name, std::vector<int64_t> shape, bool decay) {
  ParamView v;
  v.name = name;
  v.numel = 1;
  for (int64_t s : shape) v.numel *= s;
  v.shape = std::move(shape);
  v.offset = total_;
  v.decay = decay;
  total_ += (v.numel + kAlign - 1) / kAlign * kAlign;
  params_ += v.numel;
  views_.push_back(std::move(v));
  return static_cast<int>(views_.size()) - 1;
}

ParamLayout::ParamLayout(const ModelSpec& s) {
  const int64_t d = s.d_model, V = s.vocab, ffn = s.ffn, qd = int64_t{s.heads} * s.head_dim();
  embed_in_ = add("embed_in.weight", {V, d}, true);
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    LayerParams lp{};
    lp.ln1_w = add(p + "ln1.weight", {d}, false);
    lp.ln1_b = add(p + "ln1.bias", {d}, false);
    lp.ln2_w = add(p + "ln2.weight", {d}, false);
    lp.ln2_b = add(p + "ln2.bias", {d}, false);
    lp.qkv_w = add(p + "attn.qkv.weight", {s.qkv_rows(l), d}, true);
    lp.qkv_b = add(p + "attn.qkv.bias", {s.qkv_rows(l)}, false);
    lp.dense_w = add(p + "attn.dense.weight", {d, qd}, true);
    lp.dense_b = add(p + "attn.dense.bias", {d}, false);
    lp.up_w = add(p + "mlp.up.weight", {ffn, d}, true);
    lp.up_b = add(p + "mlp.up.bias", {ffn}, false);
    lp.down_w = add(p + "mlp.down.weight", {d, ffn}, true);
    lp.down_b = add(p + "mlp.down.bias", {d}, false);
    layers_.push_back(lp);
  }
  final_ln_w_ = add("final_ln.weight", {d}, false);
  final_ln_b_ = add("final_ln.bias", {d}, false);
  embed_out_ = add("embed_out.weight", {V, d}, true);
}

const ParamView* ParamLayout::find(const std::string& name) const {
  for (const auto& v : views_)
    if (v.name == name) return &v;
  return nullptr;
}

const ParamView& ParamLayout::at(const std::string& name) const {
  if (const ParamView* v = find(name)) return *v;
  throw CheckpointError("no parameter named '" + name + "' in this model");
}

void init_pythia(std::vector<float>& params, const ParamLayout& layout, const ModelSpec& s, uint64_t seed) {
  params.assign(layout.total(), 0.0f);
  // GPT-NeoX: small_init std = sqrt(2 / (5·d)); wang_init std = 2 / (L·sqrt(d)) for the
  // projections that write into the residual stream (attention dense, MLP down).
  const double small = std::sqrt(2.0 / (5.0 * s.d_model));
  const double wang = 2.0 / (s.layers * std::sqrt(static_cast<double>(s.d_model)));
  Rng rng(seed);
  for (const ParamView& v : layout.views()) {
    float* p = params.data() + v.offset;
    const bool is_ln_weight = v.name.find("ln") != std::string::npos && v.name.ends_with(".weight");
    if (is_ln_weight) {
      for (int64_t i = 0; i < v.numel; ++i) p[i] = 1.0f;
    } else if (v.decay) {
      const bool out_proj = v.name.ends_with("attn.dense.weight") || v.name.ends_with("mlp.down.weight");
      const double std = out_proj ? wang : small;
      for (int64_t i = 0; i < v.numel; ++i) p[i] = static_cast<float>(std * rng.normal());
    }
  }
}

}  // namespace mlkv
