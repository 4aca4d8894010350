// ParamLayout: every parameter of the model as a named view into one contiguous fp32 buffer.
// It is the single source of truth for names, shapes, order and weight-decay membership; the
// optimizer, checkpoints, the converter and tensor parallelism all read it.
//
// Names (ours; core/hf_names maps HF GPT-NeoX names onto them):
//   embed_in.weight [V, d]
//   layers.N.ln1.{weight,bias} [d]      layers.N.ln2.{weight,bias} [d]
//   layers.N.attn.qkv.{weight [R, d], bias [R]}   R = (H + 2·KVH)·hd in KV layers, H·hd otherwise;
//                                                 rows: all q heads, then all k heads, then all v heads
//   layers.N.attn.dense.{weight [d, H·hd], bias [d]}
//   layers.N.mlp.up.{weight [ffn, d], bias [ffn]}  layers.N.mlp.down.{weight [d, ffn], bias [d]}
//   final_ln.{weight,bias} [d]          embed_out.weight [V, d]
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/model_spec.h"

namespace mlkv {

struct ParamView {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // in elements, from the start of the flat buffer
  int64_t numel = 0;
  bool decay = false;  // weight decay applies (matrices and embeddings, not biases or LayerNorm)
};

// Indices into ParamLayout::views() for one layer, so the model needs no string look-ups.
struct LayerParams {
  int ln1_w, ln1_b, ln2_w, ln2_b, qkv_w, qkv_b, dense_w, dense_b, up_w, up_b, down_w, down_b;
};

class ParamLayout {
 public:
  explicit ParamLayout(const ModelSpec& spec);

  const std::vector<ParamView>& views() const { return views_; }
  const ParamView& at(const std::string& name) const;  // throws CheckpointError if unknown
  const ParamView* find(const std::string& name) const;
  int64_t total() const { return total_; }              // buffer length in elements (with alignment gaps)
  int64_t total_params() const { return params_; }      // real parameters
  const LayerParams& layer(int l) const { return layers_[l]; }
  int embed_in() const { return embed_in_; }
  int final_ln_w() const { return final_ln_w_; }
  int final_ln_b() const { return final_ln_b_; }
  int embed_out() const { return embed_out_; }

 private:
  int add(const std::string& name, std::vector<int64_t> shape, bool decay);
  std::vector<ParamView> views_;
  std::vector<LayerParams> layers_;
  int embed_in_ = 0, final_ln_w_ = 0, final_ln_b_ = 0, embed_out_ = 0;
  int64_t total_ = 0, params_ = 0;
};

// Pythia's initialisation (GPT-NeoX "small_init" for most weights, "wang_init" for the output
// projections of each block; zero biases; LayerNorm weight 1, bias 0), deterministic in `seed`.
void init_pythia(std::vector<float>& params, const ParamLayout& layout, const ModelSpec& spec, uint64_t seed);

}  // namespace mlkv
