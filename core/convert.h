// convert: moving models between HF checkpoints and ours, tensor by tensor (DESIGN §3).
//
//   import   HF dir ──HfSource──▶ Converter (MHA → MLKV: pool heads, merge groups, widen MLP) ──▶ checkpoint
//   export   checkpoint ──TensorSource──▶ export_hf ──▶ model.safetensors + config.json (+ modeling files)
//
// Everything is lazy: a TensorSource produces one tensor in OUR layout when asked, a Converter builds
// one target tensor from the few source tensors it needs, and the safetensors Writer asks for each in
// turn. Peak memory is therefore a few tensors, never a whole model (see core/hf/README.md for the
// 12B numbers).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/config.h"
#include "core/hf_names.h"
#include "core/model_spec.h"
#include "core/param_layout.h"
#include "core/safetensors.h"

namespace mlkv::convert {

// ---- sources -------------------------------------------------------------------------------------

// A model's tensors in OUR names and layout (ParamLayout(spec())), produced one at a time.
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual const ModelSpec& spec() const = 0;
  // Fills `out` with the tensor's ParamView::numel values. Throws CheckpointError for unknown names.
  virtual void read(const std::string& name, float* out) const = 0;
};

// A flat fp32 buffer in ParamLayout order (a loaded checkpoint, tests). Does not own the buffer.
class BufferSource : public TensorSource {
 public:
  BufferSource(ModelSpec spec, const float* data);
  const ModelSpec& spec() const override { return spec_; }
  void read(const std::string& name, float* out) const override;

 private:
  ModelSpec spec_;
  ParamLayout layout_;
  const float* data_;
};

// A safetensors file holding our names (a checkpoint's weights, a fixture's weights.safetensors).
class OursFileSource : public TensorSource {
 public:
  OursFileSource(ModelSpec spec, const std::string& path);  // checks every tensor's presence and shape
  const ModelSpec& spec() const override { return spec_; }
  void read(const std::string& name, float* out) const override;

 private:
  ModelSpec spec_;
  ParamLayout layout_;
  safetensors::Reader reader_;
};

// An HF directory in any hf::Format. The constructor checks, without reading data, that every tensor
// config.json implies is present with its shape and that nothing else is (ignoring known buffers),
// so a config that does not match the weights fails before anything is written.
class HfSource : public TensorSource {
 public:
  explicit HfSource(const std::string& dir);
  const ModelSpec& spec() const override { return config_.spec; }
  void read(const std::string& name, float* out) const override;
  const hf::HfConfig& config() const { return config_; }
  const hf::WeightDir& weights() const { return weights_; }

 private:
  // The HF tensor(s) behind one of ours, with their shapes.
  std::vector<std::pair<std::string, std::vector<int64_t>>> hf_parts(const std::string& ours) const;
  hf::HfConfig config_;
  hf::WeightDir weights_;
  ParamLayout layout_;
  std::string embed_out_name_ = "embed_out.weight";
};

// ---- the conversion arithmetic -------------------------------------------------------------------

enum class Merge { mean, paper, owner };
Merge parse_merge(const std::string& s);  // ConfigError for anything but mean | paper | owner
const char* merge_name(Merge m);

// out[g] = mean of in[g·k … g·k+k−1], k = in_heads / out_heads; each head is `row` floats.
void pool_heads(float* out, const float* in, int in_heads, int out_heads, int64_t row);

// Combines one tensor from each layer of a group, fed in layer order, into the owner's:
//   mean   Σ x_i / n                              (uniform)
//   paper  acc = x_0; acc = (acc + x_i) / 2       (the seed code's running pairwise mean: the last
//                                                  layer weighs ½, the owner 1/2^(n−1))
//   owner  x_0                                    (the owner's own; the others are dropped)
class GroupCombiner {
 public:
  GroupCombiner(Merge m, int64_t n) : merge_(m), acc_(static_cast<size_t>(n), 0.0) {}
  void add(const float* x);
  void result(float* out) const;
  int count() const { return count_; }

 private:
  Merge merge_;
  std::vector<double> acc_;
  int count_ = 0;
};

// MLP widening to `to` neurons, function-preserving: target neuron j ≥ from copies source neuron
// (j − from) mod from — its up row and up bias exactly — and every copy of source neuron i (the
// original included) gets down column down[:, i] / n_i, where n_i counts those copies. Since each
// copy computes the same gelu(up_i·x + b_i), the down projection sums back to the original output.
// The down bias is unchanged. (The seed paper copied neurons the same way but kept the down
// columns, which changes the function; ours does not.)
int widen_source_neuron(int j, int from);
int widen_copies(int i, int from, int to);
void widen_up_rows(float* out, const float* in, int from, int to, int64_t cols);   // up.weight (cols=d), up.bias (1)
void widen_down_cols(float* out, const float* in, int rows, int from, int to);     // down.weight [d, ffn]

// The seed paper's widened width: the K/V parameters lost, (kv_heads·kv_layers before − after) ·
// (2·d·hd + 2·hd), divided per layer (floor) and by d (rounded half to even, as Python's round),
// halved (floor) and added to ffn.
int paper_widened_ffn(const ModelSpec& source, const KvPlan& target);

// Builds the target model's tensors from a source with the same dimensions. Needs: target.kv_heads
// divides the source's, every target owner is a source KV layer, target ffn ≥ source ffn. Within a
// target group, the K/V of every source KV layer are head-pooled, then combined with `merge`.
class Converter {
 public:
  Converter(const TensorSource& src, ModelSpec target, Merge merge);
  const ModelSpec& target() const { return target_; }
  const ParamLayout& layout() const { return layout_; }
  void fill(const std::string& name, float* out) const;
  std::vector<float> materialize() const;  // the whole flat buffer (small models, tests)

 private:
  void fill_qkv(int l, bool bias, float* out) const;
  const TensorSource& src_;
  ModelSpec target_;
  ParamLayout layout_;
  Merge merge_;
};

// ---- import: an HF directory into a target config --------------------------------------------------

struct ImportOptions {
  bool compat_paper = false;  // --compat paper: the source must be the seed paper's format
};

// Checks the HF model against the target config (dimensions, rotary, eps; the plan for already-MLKV
// sources) and fills in what the conversion decides: with kv.widen_mlp and model.ffn unset, model.ffn
// becomes the paper's widened width. Throws ConfigError naming both files and the mismatched key.
void reconcile_target(const hf::HfConfig& src, Config& target, const ImportOptions& opt);

// What `mlkv-convert import` prints.
std::string describe_import(const hf::HfConfig& src, const hf::WeightDir& w, const Config& target);

// Writes the converted model as a checkpoint the trainer starts from (step 0). Returns its path.
std::string write_init_checkpoint(const std::string& out, const Config& target, const Converter& conv);

// A checkpoint opened for streaming reads: a step directory, or a run directory (its newest complete
// checkpoint, core/checkpoint.h). The weights are read tensor by tensor from its model.safetensors.
struct OpenedCheckpoint {
  std::string dir;  // the step directory
  Config config;    // its resolved config.toml
  std::unique_ptr<OursFileSource> weights;
};
OpenedCheckpoint open_checkpoint(const std::string& path);

// ---- provenance: what import records about its HF source -----------------------------------------

// CKPT/hf_source.json, written next to an imported checkpoint: the source directory, its token ids
// (config.json) and its generation_config.json. An export of that checkpoint, or of a run trained
// from it (found through the run's train.init_from), writes them back.
struct HfProvenance {
  std::string source;  // the imported HF directory; empty: no HF source found
  int bos_token_id = 0, eos_token_id = 0;  // without a source: Pythia's <|endoftext|> = 0 for both
  int pad_token_id = -1;                   // -1: none
  std::string generation_config;           // the source's generation_config.json text, or empty
};
inline constexpr const char* kHfSourceFile = "hf_source.json";
// Reads HFDIR/config.json (+ generation_config.json) and writes CKPT/hf_source.json. Throws
// ConfigError for unreadable JSON, IoError when it cannot write.
void record_hf_source(const std::string& ckpt, const std::string& hf_dir);
// The provenance of an opened checkpoint: its own checkpoint directory's hf_source.json, else that of
// train.init_from (followed through further init_from links). Default-constructed when none.
HfProvenance find_hf_source(const std::string& step_dir, const Config& config);

// ---- tokenizer files of an export -----------------------------------------------------------------

// The tokenizer bundled with mlkv-train (data/tokenizer/gpt-neox-20b.json, embedded in the binary).
inline constexpr const char* kBundledTokenizer = "gpt-neox-20b";

// The tokenizer files an export writes, read and checked in memory (nothing written yet).
struct TokenizerFiles {
  std::string from;                                 // what they came from, for the summary
  std::vector<std::pair<std::string, std::string>> files;  // (file name, text)
};
// `from` is kBundledTokenizer, a tokenizer.json file, or a directory with tokenizer.json (whose
// tokenizer_config.json and special_tokens_map.json are copied when present, else written). Checks
// that every token id is < spec.vocab and that `ids`' bos/eos (and pad) name tokens. Throws
// ConfigError naming the file at fault.
TokenizerFiles prepare_tokenizer(const std::string& from, const ModelSpec& spec, const HfProvenance& ids);

// ---- export --------------------------------------------------------------------------------------

struct ExportOptions {
  safetensors::DType dtype = safetensors::DType::F32;  // F32 or BF16
  std::string tokenizer_from;  // "" (no tokenizer files), kBundledTokenizer, a tokenizer.json or a dir
  HfProvenance source;         // token ids and generation config (find_hf_source)
};

// Writes out_dir/{model.safetensors, config.json}, for non-MHA plans the custom-model files
// (configuration_mlkv.py, modeling_mlkv.py; config.json's auto_map points at them), the tokenizer
// files and the source's generation_config.json. Everything that can be refused (options, tokenizer)
// is checked before out_dir is created. Returns a summary.
std::string export_hf(const TensorSource& src, const std::string& out_dir, const ExportOptions& opt);
// config.json text for `spec` (plain GPTNeoXForCausalLM when every layer owns all heads).
std::string hf_config_json(const ModelSpec& spec, safetensors::DType dtype, const HfProvenance& ids = {});
bool exports_as_plain_gpt_neox(const ModelSpec& spec);

// core/hf/*.py, embedded at build time (core/hf/embed.cmake). Empty when unknown.
std::string_view embedded_file(std::string_view name);

}  // namespace mlkv::convert
