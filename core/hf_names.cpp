// HF config.json parsing, tensor-name mapping, fused-QKV reordering and weight directories.
#include "core/hf_names.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/errors.h"

namespace mlkv::hf {

namespace fs = std::filesystem;
using nlohmann::json;

const char* format_name(Format f) {
  switch (f) {
    case Format::gpt_neox: return "gpt_neox (transformers GPTNeoXForCausalLM)";
    case Format::paper: return "paper (the seed paper's MLKV GPT-NeoX code)";
    case Format::mlkv: return "mlkv_neox (exported by mlkv-convert)";
  }
  return "?";
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

static json read_json_file(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) throw CheckpointError(path + ": cannot open " + what);
  try {
    return json::parse(in);
  } catch (const json::parse_error& e) {
    throw CheckpointError(path + ": not valid JSON (byte " + std::to_string(e.byte) + "): " + e.what());
  }
}

// ---- config.json --------------------------------------------------------------------------------

namespace {

struct Keys {
  const json& j;
  const std::string& path;
  [[noreturn]] void fail(const std::string& key, const std::string& msg) const {
    throw ConfigError(path + ": key '" + key + "': " + msg);
  }
  bool has(const std::string& k) const { return j.contains(k) && !j[k].is_null(); }
  int64_t integer(const std::string& k, std::optional<int64_t> dflt = std::nullopt) const {
    if (!has(k)) {
      if (dflt) return *dflt;
      fail(k, "missing (required to build the model)");
    }
    if (!j[k].is_number_integer()) fail(k, "must be an integer, got " + j[k].dump());
    const int64_t v = j[k].get<int64_t>();
    if (v < 1 || v > (int64_t{1} << 40)) fail(k, "must be positive, got " + std::to_string(v));
    return v;
  }
  double number(const json& obj, const std::string& k, const std::string& shown) const {
    if (!obj[k].is_number()) fail(shown, "must be a number, got " + obj[k].dump());
    return obj[k].get<double>();
  }
  bool boolean(const std::string& k, bool dflt) const {
    if (!has(k)) return dflt;
    if (!j[k].is_boolean()) fail(k, "must be true or false, got " + j[k].dump());
    return j[k].get<bool>();
  }
  std::string string(const std::string& k, const std::string& dflt) const {
    if (!has(k)) return dflt;
    if (!j[k].is_string()) fail(k, "must be a string, got " + j[k].dump());
    return j[k].get<std::string>();
  }
};

}  // namespace

std::vector<int> paper_owners(int layers, int kv_layers) {
  std::vector<int> o{0};
  for (int i = 0; i + 1 < kv_layers; ++i)
    o.push_back(static_cast<int>((i + 1) * (static_cast<double>(layers) / kv_layers)));
  return o;
}

HfConfig read_config(const std::string& dir) {
  HfConfig c;
  c.path = (fs::path(dir) / "config.json").string();
  if (!fs::exists(c.path)) throw CheckpointError(dir + ": no config.json (is this an HF model directory?)");
  const json j = read_json_file(c.path, "config.json");
  if (!j.is_object()) throw CheckpointError(c.path + ": not a JSON object");
  const Keys k{j, c.path};

  const std::string type = k.string("model_type", "gpt_neox");
  if (type != "gpt_neox" && type != "mlkv_neox")
    k.fail("model_type", "'" + type + "' is not a GPT-NeoX model (expected gpt_neox or mlkv_neox)");
  // What our model cannot express: refuse instead of converting something else silently.
  if (!k.boolean("use_parallel_residual", true))
    k.fail("use_parallel_residual", "false (sequential residual) is not supported; Pythia uses the parallel residual");
  if (const std::string act = k.string("hidden_act", "gelu"); act != "gelu")
    k.fail("hidden_act", "'" + act + "' is not supported; only the exact (erf) 'gelu' is");
  if (k.boolean("tie_word_embeddings", false))
    k.fail("tie_word_embeddings", "true is not supported; embed_in and embed_out are untied in Pythia");
  if (!k.boolean("attention_bias", true)) k.fail("attention_bias", "false is not supported; every linear has a bias");
  if (k.has("rope_scaling")) k.fail("rope_scaling", "rotary scaling is not supported");
  if (k.boolean("use_key_value_mlp", false))
    k.fail("use_key_value_mlp", "the seed paper's KV-MLP variant is not supported (only linear K/V projections)");

  ModelSpec& s = c.spec;
  s.layers = static_cast<int>(k.integer("num_hidden_layers"));
  s.d_model = static_cast<int>(k.integer("hidden_size"));
  s.heads = static_cast<int>(k.integer("num_attention_heads"));
  s.ffn = static_cast<int>(k.integer("intermediate_size"));
  s.vocab = k.integer("vocab_size");
  c.max_position_embeddings = static_cast<int>(k.integer("max_position_embeddings", 2048));
  s.max_seq_len = c.max_position_embeddings;
  if (k.has("layer_norm_eps")) s.ln_eps = k.number(j, "layer_norm_eps", "layer_norm_eps");

  // Rotary: transformers 5 nests it in rope_parameters; older files use top-level keys.
  s.rotary_pct = 0.25;
  s.rotary_base = 10000.0;
  if (k.has("rotary_pct")) s.rotary_pct = k.number(j, "rotary_pct", "rotary_pct");
  if (k.has("rotary_emb_base")) s.rotary_base = k.number(j, "rotary_emb_base", "rotary_emb_base");
  if (k.has("rope_parameters")) {
    const json& r = j["rope_parameters"];
    if (!r.is_object()) k.fail("rope_parameters", "must be an object");
    if (r.contains("rope_type") && r["rope_type"] != "default")
      k.fail("rope_parameters.rope_type", r["rope_type"].dump() + " is not supported (only \"default\")");
    if (r.contains("partial_rotary_factor"))
      s.rotary_pct = k.number(r, "partial_rotary_factor", "rope_parameters.partial_rotary_factor");
    if (r.contains("rope_theta")) s.rotary_base = k.number(r, "rope_theta", "rope_parameters.rope_theta");
  }

  const int H = s.heads, L = s.layers;
  if (type == "mlkv_neox") {
    c.format = Format::mlkv;
    if (!j.contains("kv_owners") || !j["kv_owners"].is_array()) k.fail("kv_owners", "missing list of KV layers");
    std::vector<int> owners;
    for (const json& o : j["kv_owners"]) {
      if (!o.is_number_integer()) k.fail("kv_owners", "entries must be integers");
      owners.push_back(o.get<int>());
    }
    try {
      s.kv = KvPlan::from_owners(L, owners, static_cast<int>(k.integer("num_key_value_heads")));
    } catch (const ConfigError& e) {
      k.fail("kv_owners", e.what());
    }
    s.kv.rope_shared_keys = k.boolean("rope_shared_keys", true);
  } else if (k.has("num_key_value_layers") || k.has("num_key_value_heads")) {
    c.format = Format::paper;
    const int kvl = static_cast<int>(k.integer("num_key_value_layers", L));
    const int kvh = static_cast<int>(k.integer("num_key_value_heads", H));
    if (kvl > L) k.fail("num_key_value_layers", std::to_string(kvl) + " exceeds num_hidden_layers = " + std::to_string(L));
    try {
      s.kv = KvPlan::from_owners(L, paper_owners(L, kvl), kvh);
    } catch (const ConfigError& e) {
      k.fail("num_key_value_layers", e.what());
    }
    s.kv.rope_shared_keys = false;  // the paper shares K before rotary (see DESIGN §3)
  } else {
    c.format = Format::gpt_neox;
    s.kv = KvPlan::from_kv_layers(L, L, H);
  }
  s.validate(c.path);
  return c;
}

// ---- names --------------------------------------------------------------------------------------

std::string layer_prefix(int l) { return "gpt_neox.layers." + std::to_string(l) + "."; }

std::string hf_name(const std::string& ours) {
  static const std::map<std::string, std::string> top = {
      {"embed_in.weight", "gpt_neox.embed_in.weight"},
      {"final_ln.weight", "gpt_neox.final_layer_norm.weight"},
      {"final_ln.bias", "gpt_neox.final_layer_norm.bias"},
      {"embed_out.weight", "embed_out.weight"},
  };
  if (auto it = top.find(ours); it != top.end()) return it->second;
  static const std::map<std::string, std::string> per_layer = {
      {"ln1.weight", "input_layernorm.weight"},          {"ln1.bias", "input_layernorm.bias"},
      {"ln2.weight", "post_attention_layernorm.weight"}, {"ln2.bias", "post_attention_layernorm.bias"},
      {"attn.dense.weight", "attention.dense.weight"},   {"attn.dense.bias", "attention.dense.bias"},
      {"mlp.up.weight", "mlp.dense_h_to_4h.weight"},     {"mlp.up.bias", "mlp.dense_h_to_4h.bias"},
      {"mlp.down.weight", "mlp.dense_4h_to_h.weight"},   {"mlp.down.bias", "mlp.dense_4h_to_h.bias"},
  };
  if (ours.starts_with("layers.")) {
    const size_t dot = ours.find('.', 7);
    if (dot != std::string::npos) {
      if (auto it = per_layer.find(ours.substr(dot + 1)); it != per_layer.end())
        return "gpt_neox.layers." + ours.substr(7, dot - 7) + "." + it->second;
    }
  }
  throw CheckpointError("no HF name for our tensor '" + ours + "'");
}

bool is_ignored_buffer(const std::string& n) {
  return n.ends_with(".attention.bias") || n.ends_with(".attention.masked_bias") || n.ends_with("rotary_emb.inv_freq");
}

// ---- fused QKV ------------------------------------------------------------------------------------

void qkv_from_hf(float* ours, const float* hf, int heads, int hd, int64_t cols) {
  const int64_t rows = int64_t{3} * heads * hd;
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = hf + hf_qkv_row(r, heads, hd) * cols;
    std::copy(src, src + cols, ours + r * cols);
  }
}

void qkv_to_hf(float* hf, const float* ours, int heads, int hd, int64_t cols) {
  const int64_t rows = int64_t{3} * heads * hd;
  for (int64_t r = 0; r < rows; ++r) std::copy(ours + r * cols, ours + (r + 1) * cols, hf + hf_qkv_row(r, heads, hd) * cols);
}

// ---- weight directories -------------------------------------------------------------------------

WeightDir::WeightDir(const std::string& dir) : dir_(dir) {
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single = fs::path(dir) / "model.safetensors";
  if (fs::exists(index)) {
    const json j = read_json_file(index.string(), "the shard index");
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw CheckpointError(index.string() + ": no 'weight_map' object");
    std::map<std::string, size_t> shard_of_file;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) throw CheckpointError(index.string() + ": weight_map['" + it.key() + "'] is not a file name");
      const std::string file = it.value().get<std::string>();
      // Index files come from the internet: a shard must be a plain file name inside DIR.
      if (file.empty() || file.find('/') != std::string::npos || file.find('\\') != std::string::npos || file == "." ||
          file == "..")
        throw CheckpointError(index.string() + ": weight_map['" + it.key() + "'] = '" + file +
                              "' is not a file name in " + dir);
      auto [pos, fresh] = shard_of_file.try_emplace(file, shards_.size());
      if (fresh) shards_.push_back(std::make_unique<safetensors::Reader>((fs::path(dir) / file).string()));
      if (!shards_[pos->second]->find(it.key()))
        throw CheckpointError(index.string() + ": weight_map puts '" + it.key() + "' in " + file + ", which lacks it");
      where_[it.key()] = pos->second;
    }
  } else if (fs::exists(single)) {
    shards_.push_back(std::make_unique<safetensors::Reader>(single.string()));
    for (const auto& t : shards_[0]->tensors()) where_[t.name] = 0;
  } else {
    std::string hint;
    if (fs::exists(fs::path(dir) / "pytorch_model.bin"))
      hint = " (pytorch_model.bin is a pickle, which we do not read: re-save it with "
             "save_pretrained(DIR, safe_serialization=True))";
    throw CheckpointError(dir + ": neither model.safetensors nor model.safetensors.index.json" + hint);
  }
}

const safetensors::TensorInfo& WeightDir::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw CheckpointError(dir_ + ": missing tensor '" + name + "'");
  return *shards_[it->second]->find(name);
}

const std::string& WeightDir::file_of(const std::string& name) const {
  (void)info(name);
  return shards_[where_.at(name)]->path();
}

void WeightDir::read(const std::string& name, const std::vector<int64_t>& shape, float* out) const {
  const safetensors::TensorInfo& t = info(name);
  if (t.shape != shape)
    throw CheckpointError(file_of(name) + ": tensor '" + name + "' has shape " + shape_str(t.shape) + ", expected " +
                          shape_str(shape) + " from config.json");
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  shards_[where_.at(name)]->read_f32(name, out, n);
}

std::vector<std::string> WeightDir::names() const {
  std::vector<std::string> n;
  for (const auto& [k, v] : where_) n.push_back(k);
  return n;
}

std::string WeightDir::dtypes() const {
  std::set<std::string> d;
  for (const auto& [name, shard] : where_)
    if (!is_ignored_buffer(name)) d.insert(safetensors::dtype_name(shards_[shard]->find(name)->dtype));
  std::string o;
  for (const auto& x : d) o += (o.empty() ? "" : ", ") + x;
  return o;
}

}  // namespace mlkv::hf
