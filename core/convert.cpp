// Tensor sources (ours, HF) and the MHA → MLKV conversion arithmetic (DESIGN §3); see convert.h.
#include "core/convert.h"

#include <cmath>
#include <set>

#include "core/errors.h"

namespace mlkv::convert {

static int64_t numel_of(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t x : s) n *= x;
  return n;
}

// "layers.12.attn.qkv.weight" → 12 and "attn.qkv.weight"; -1 for non-layer names.
static int split_layer(const std::string& name, std::string& rest) {
  if (!name.starts_with("layers.")) return -1;
  const size_t dot = name.find('.', 7);
  if (dot == std::string::npos) return -1;
  rest = name.substr(dot + 1);
  return std::stoi(name.substr(7, dot - 7));
}

// ---- BufferSource / OursFileSource ------------------------------------------------------------------

BufferSource::BufferSource(ModelSpec spec, const float* data) : spec_(std::move(spec)), layout_(spec_), data_(data) {}

void BufferSource::read(const std::string& name, float* out) const {
  const ParamView& v = layout_.at(name);
  std::copy(data_ + v.offset, data_ + v.offset + v.numel, out);
}

OursFileSource::OursFileSource(ModelSpec spec, const std::string& path)
    : spec_(std::move(spec)), layout_(spec_), reader_(path) {
  for (const ParamView& v : layout_.views()) {
    const safetensors::TensorInfo& t = reader_.at(v.name);
    if (t.shape != v.shape)
      throw CheckpointError(path + ": tensor '" + v.name + "' has shape " + hf::shape_str(t.shape) + ", the model needs " +
                            hf::shape_str(v.shape));
  }
}

void OursFileSource::read(const std::string& name, float* out) const {
  const ParamView& v = layout_.at(name);
  reader_.read_f32(name, out, v.numel);
}

// ---- HfSource -------------------------------------------------------------------------------------

std::vector<std::pair<std::string, std::vector<int64_t>>> HfSource::hf_parts(const std::string& ours) const {
  const ModelSpec& s = config_.spec;
  std::string rest;
  const int l = split_layer(ours, rest);
  if (l >= 0 && (rest == "attn.qkv.weight" || rest == "attn.qkv.bias")) {
    const bool w = rest == "attn.qkv.weight";
    const std::string suffix = w ? ".weight" : ".bias";
    auto shape = [&](int64_t rows) { return w ? std::vector<int64_t>{rows, s.d_model} : std::vector<int64_t>{rows}; };
    const std::string p = hf::layer_prefix(l) + "attention.";
    const int64_t hd = s.head_dim();
    if (config_.format == hf::Format::gpt_neox) return {{p + "query_key_value" + suffix, shape(3 * int64_t{s.d_model})}};
    std::vector<std::pair<std::string, std::vector<int64_t>>> parts{{p + "query" + suffix, shape(s.heads * hd)}};
    if (s.kv.is_owner(l)) {
      parts.push_back({p + "key" + suffix, shape(s.kv.kv_heads * hd)});
      parts.push_back({p + "value" + suffix, shape(s.kv.kv_heads * hd)});
    }
    return parts;
  }
  if (ours == "embed_out.weight") return {{embed_out_name_, layout_.at(ours).shape}};
  return {{hf::hf_name(ours), layout_.at(ours).shape}};
}

HfSource::HfSource(const std::string& dir) : config_(hf::read_config(dir)), weights_(dir), layout_(config_.spec) {
  // transformers 5 calls the output embedding lm_head in memory; accept a file saved under that name.
  if (!weights_.has("embed_out.weight") && weights_.has("lm_head.weight")) embed_out_name_ = "lm_head.weight";
  std::set<std::string> used;
  for (const ParamView& v : layout_.views()) {
    for (const auto& [name, shape] : hf_parts(v.name)) {
      if (!weights_.has(name))
        throw CheckpointError(dir + ": missing tensor '" + name + "' (config.json " + hf::format_name(config_.format) +
                              " needs it for our '" + v.name + "')");
      const safetensors::TensorInfo& t = weights_.info(name);
      if (t.shape != shape)
        throw CheckpointError(weights_.file_of(name) + ": tensor '" + name + "' has shape " + hf::shape_str(t.shape) +
                              ", but " + config_.path + " implies " + hf::shape_str(shape));
      using safetensors::DType;
      if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16 && t.dtype != DType::F64)
        throw CheckpointError(weights_.file_of(name) + ": tensor '" + name + "' has dtype " +
                              safetensors::dtype_name(t.dtype) + "; weights must be F32, F16, BF16 or F64");
      used.insert(name);
    }
  }
  for (const std::string& n : weights_.names())
    if (!used.count(n) && !hf::is_ignored_buffer(n))
      throw CheckpointError(weights_.file_of(n) + ": unexpected tensor '" + n + "': " + config_.path +
                            " (KV plan " + config_.spec.kv.name(config_.spec.heads) +
                            ") does not explain it; does config.json match the weights?");
}

void HfSource::read(const std::string& name, float* out) const {
  const auto parts = hf_parts(name);
  const ModelSpec& s = config_.spec;
  if (config_.format == hf::Format::gpt_neox && name.find("attn.qkv") != std::string::npos) {
    const auto& [hf_n, shape] = parts[0];
    std::vector<float> tmp(static_cast<size_t>(numel_of(shape)));
    weights_.read(hf_n, shape, tmp.data());
    hf::qkv_from_hf(out, tmp.data(), s.heads, s.head_dim(), shape.size() == 2 ? shape[1] : 1);
    return;
  }
  for (const auto& [hf_n, shape] : parts) {  // split q | k | v (or a plain tensor) laid end to end
    weights_.read(hf_n, shape, out);
    out += numel_of(shape);
  }
}

// ---- arithmetic -------------------------------------------------------------------------------------

Merge parse_merge(const std::string& s) {
  if (s == "mean") return Merge::mean;
  if (s == "paper") return Merge::paper;
  if (s == "owner") return Merge::owner;
  throw ConfigError("merge mode '" + s + "' is not one of mean, paper, owner");
}

const char* merge_name(Merge m) {
  switch (m) {
    case Merge::mean: return "mean";
    case Merge::paper: return "paper";
    case Merge::owner: return "owner";
  }
  return "?";
}

void pool_heads(float* out, const float* in, int in_heads, int out_heads, int64_t row) {
  const int k = in_heads / out_heads;
  for (int g = 0; g < out_heads; ++g)
    for (int64_t e = 0; e < row; ++e) {
      double s = 0;
      for (int i = 0; i < k; ++i) s += in[(int64_t{g} * k + i) * row + e];
      out[g * row + e] = static_cast<float>(s / k);
    }
}

void GroupCombiner::add(const float* x) {
  const size_t n = acc_.size();
  if (count_ == 0 || merge_ == Merge::mean) {
    for (size_t i = 0; i < n; ++i) acc_[i] = (count_ == 0 ? 0.0 : acc_[i]) + x[i];
  } else if (merge_ == Merge::paper) {
    // The seed code stores the running mean back in fp32 after every step; so do we.
    for (size_t i = 0; i < n; ++i) acc_[i] = static_cast<float>((acc_[i] + x[i]) * 0.5);
  }  // owner: later layers are dropped
  ++count_;
}

void GroupCombiner::result(float* out) const {
  const double scale = merge_ == Merge::mean && count_ > 0 ? 1.0 / count_ : 1.0;
  for (size_t i = 0; i < acc_.size(); ++i) out[i] = static_cast<float>(acc_[i] * scale);
}

int widen_source_neuron(int j, int from) { return j < from ? j : (j - from) % from; }

int widen_copies(int i, int from, int to) {
  // Neuron i itself plus every j in [from, to) with (j − from) mod from == i.
  const int extra = to - from;
  return 1 + (extra > i ? (extra - i - 1) / from + 1 : 0);
}

void widen_up_rows(float* out, const float* in, int from, int to, int64_t cols) {
  for (int j = 0; j < to; ++j) {
    const float* src = in + int64_t{widen_source_neuron(j, from)} * cols;
    std::copy(src, src + cols, out + int64_t{j} * cols);
  }
}

void widen_down_cols(float* out, const float* in, int rows, int from, int to) {
  std::vector<float> inv(static_cast<size_t>(from));
  for (int i = 0; i < from; ++i) inv[i] = 1.0f / static_cast<float>(widen_copies(i, from, to));
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < to; ++j) {
      const int i = widen_source_neuron(j, from);
      const float x = in[int64_t{r} * from + i];
      // Powers of two divide exactly; other counts round once, the best fp32 can do.
      out[int64_t{r} * to + j] = widen_copies(i, from, to) == 1 ? x : x * inv[i];
    }
}

int paper_widened_ffn(const ModelSpec& source, const KvPlan& target) {
  const int64_t hd = source.head_dim(), d = source.d_model;
  const int64_t before = int64_t{source.kv.kv_layers()} * source.kv.kv_heads;
  const int64_t after = int64_t{target.kv_layers()} * target.kv_heads;
  if (after >= before) return source.ffn;
  const int64_t lost = (before - after) * (2 * d * hd + 2 * hd);
  const int64_t per_layer = lost / source.layers;
  int64_t q = per_layer / d;
  const int64_t rem = per_layer % d;
  if (2 * rem > d || (2 * rem == d && (q % 2 == 1))) ++q;  // Python's round(): half to even
  return source.ffn + static_cast<int>(q / 2);
}

// ---- Converter ----------------------------------------------------------------------------------------

Converter::Converter(const TensorSource& src, ModelSpec target, Merge merge)
    : src_(src), target_(std::move(target)), layout_(target_), merge_(merge) {
  const ModelSpec& s = src_.spec();
  const ModelSpec& t = target_;
  auto fail = [](const std::string& m) { throw ConfigError("conversion: " + m); };
  if (s.layers != t.layers || s.d_model != t.d_model || s.heads != t.heads || s.vocab != t.vocab)
    fail("source and target differ in layers, d_model, heads or vocab");
  if (t.ffn < s.ffn) fail("target ffn " + std::to_string(t.ffn) + " is narrower than the source's " + std::to_string(s.ffn));
  if (s.kv.kv_heads % t.kv.kv_heads != 0)
    fail("target kv_heads = " + std::to_string(t.kv.kv_heads) + " does not divide the source's " +
         std::to_string(s.kv.kv_heads) + " (heads are pooled in contiguous groups)");
  for (int o : t.kv.owners())
    if (!s.kv.is_owner(o)) fail("target KV layer " + std::to_string(o) + " has no K/V projection in the source");
  if (s.kv.kv_layers() != s.layers && s.kv.rope_shared_keys != t.kv.rope_shared_keys)
    fail("the source shares K across layers with rope_shared_keys = " + std::string(s.kv.rope_shared_keys ? "true" : "false") +
         "; the target must keep it");
}

void Converter::fill_qkv(int l, bool bias, float* out) const {
  const ModelSpec& s = src_.spec();
  const int64_t cols = bias ? 1 : s.d_model, hd = s.head_dim(), H = s.heads;
  const int kv_s = s.kv.kv_heads, kv_t = target_.kv.kv_heads;
  const std::string suffix = bias ? ".bias" : ".weight";
  auto read_src = [&](int layer, std::vector<float>& buf) {
    buf.resize(static_cast<size_t>(int64_t{s.qkv_rows(layer)} * cols));
    src_.read("layers." + std::to_string(layer) + ".attn.qkv" + suffix, buf.data());
  };
  std::vector<float> buf;
  read_src(l, buf);
  std::copy(buf.begin(), buf.begin() + H * hd * cols, out);  // every layer keeps its own queries
  if (!target_.kv.is_owner(l)) return;

  const int64_t part = kv_t * hd * cols;
  GroupCombiner k(merge_, part), v(merge_, part);
  std::vector<float> pooled(static_cast<size_t>(part));
  for (int m = l; m <= target_.kv.group_top(l); ++m) {
    if (!s.kv.is_owner(m)) continue;  // a source non-owner has no K/V of its own to contribute
    if (m != l) read_src(m, buf);
    pool_heads(pooled.data(), buf.data() + H * hd * cols, kv_s, kv_t, hd * cols);
    k.add(pooled.data());
    pool_heads(pooled.data(), buf.data() + (H + kv_s) * hd * cols, kv_s, kv_t, hd * cols);
    v.add(pooled.data());
  }
  k.result(out + H * hd * cols);
  v.result(out + H * hd * cols + part);
}

void Converter::fill(const std::string& name, float* out) const {
  const ModelSpec& s = src_.spec();
  std::string rest;
  const int l = split_layer(name, rest);
  if (l >= 0 && (rest == "attn.qkv.weight" || rest == "attn.qkv.bias")) return fill_qkv(l, rest.ends_with("bias"), out);
  if (l >= 0 && target_.ffn != s.ffn && (rest == "mlp.up.weight" || rest == "mlp.up.bias" || rest == "mlp.down.weight")) {
    const bool down = rest == "mlp.down.weight";
    const int64_t cols = rest == "mlp.up.weight" ? s.d_model : 1;
    std::vector<float> tmp(static_cast<size_t>(int64_t{s.ffn} * (down ? s.d_model : cols)));
    src_.read(name, tmp.data());
    if (down)
      widen_down_cols(out, tmp.data(), s.d_model, s.ffn, target_.ffn);
    else
      widen_up_rows(out, tmp.data(), s.ffn, target_.ffn, cols);
    return;
  }
  src_.read(name, out);  // everything else carries over unchanged
}

std::vector<float> Converter::materialize() const {
  std::vector<float> flat(static_cast<size_t>(layout_.total()), 0.0f);
  for (const ParamView& v : layout_.views()) fill(v.name, flat.data() + v.offset);
  return flat;
}

}  // namespace mlkv::convert
