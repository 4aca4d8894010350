// hf_names: how HF checkpoints of GPT-NeoX / MLKV models map onto ours (DESIGN §2, §3).
//
//   * config.json → ModelSpec, for three layouts of the same architecture:
//       gpt_neox  transformers' GPTNeoXForCausalLM: a fused query_key_value per layer, MHA;
//       paper     the seed paper's MLKV code (model_type gpt_neox plus num_key_value_layers /
//                 num_key_value_heads): separate query/key/value/dense linears, key/value only in
//                 KV layers, keys not rotated in non-owner layers (our rope_shared_keys = false);
//       mlkv      what `mlkv-convert export` writes for non-MHA plans (model_type mlkv_neox):
//                 the same split linears, with the owner list and rope_shared_keys spelled out.
//   * tensor names: gpt_neox.layers.N.input_layernorm ↔ layers.N.ln1, and so on;
//   * the fused QKV row order: HF row h·3·hd + j·hd + e  ↔  our row j·H·hd + h·hd + e;
//   * a weight directory: model.safetensors or shards listed by model.safetensors.index.json.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/model_spec.h"
#include "core/safetensors.h"

namespace mlkv::hf {

enum class Format { gpt_neox, paper, mlkv };
const char* format_name(Format f);

struct HfConfig {
  std::string path;     // the config.json it came from
  Format format = Format::gpt_neox;
  ModelSpec spec;       // architecture and KV plan as the checkpoint stores it
  int max_position_embeddings = 2048;
};

// Reads DIR/config.json. Refuses what our model cannot represent (sequential residual, another
// activation, tied embeddings, no attention bias, the paper's KV-MLP variant) with a ConfigError
// naming the file and the key. Accepts transformers 5 `rope_parameters` and the older top-level
// `rotary_pct` / `rotary_emb_base`.
HfConfig read_config(const std::string& dir);

// The seed paper's KV layers: [0] + [int((i+1) * (L / n)) for i < n-1], in floating point as its code
// computes them (this equals our integer floor rule except where L/n rounds, so we keep theirs).
std::vector<int> paper_owners(int layers, int kv_layers);

// ---- names
std::string layer_prefix(int l);  // "gpt_neox.layers.l."
// HF name of one of OUR tensors that is not a q/k/v projection (those are split or fused per format).
// Throws CheckpointError for names it does not know.
std::string hf_name(const std::string& ours);
// Buffers some checkpoints carry that hold no parameters.
bool is_ignored_buffer(const std::string& hf_name);

// ---- fused QKV (gpt_neox format, MHA): HF row h·3·hd + j·hd + e ↔ our row j·H·hd + h·hd + e.
inline int64_t hf_qkv_row(int64_t our_row, int heads, int hd) {
  const int64_t j = our_row / (int64_t{heads} * hd), h = (our_row / hd) % heads, e = our_row % hd;
  return h * 3 * hd + j * hd + e;
}
// Rows of `cols` values each (cols = d for the weight, 1 for the bias); 3·H·hd rows.
void qkv_from_hf(float* ours, const float* hf, int heads, int hd, int64_t cols);
void qkv_to_hf(float* hf, const float* ours, int heads, int hd, int64_t cols);

// ---- the weights of a directory
class WeightDir {
 public:
  explicit WeightDir(const std::string& dir);  // CheckpointError if neither file is usable
  const std::string& dir() const { return dir_; }
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  // CheckpointError naming the directory and tensor when absent.
  const safetensors::TensorInfo& info(const std::string& name) const;
  const std::string& file_of(const std::string& name) const;
  // Reads a float tensor (F32/F16/BF16/F64) into out after checking its shape.
  void read(const std::string& name, const std::vector<int64_t>& shape, float* out) const;
  std::vector<std::string> names() const;
  std::string dtypes() const;  // e.g. "BF16" or "F16, F32" — for the import report

 private:
  std::string dir_;
  std::vector<std::unique_ptr<safetensors::Reader>> shards_;
  std::map<std::string, size_t> where_;
};

std::string shape_str(const std::vector<int64_t>& s);  // "[3, 4]"

}  // namespace mlkv::hf
