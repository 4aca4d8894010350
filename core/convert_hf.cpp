// The HF-facing ends of mlkv-convert: checking an HF model against the target config, describing and
// writing the converted checkpoint, and exporting a checkpoint as an HF directory (convert.h).
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/checkpoint.h"
#include "core/convert.h"
#include "core/errors.h"

namespace mlkv::convert {

namespace fs = std::filesystem;

static std::string join(const std::vector<int>& v) {
  std::string o;
  for (size_t i = 0; i < v.size(); ++i) o += (i ? ", " : "") + std::to_string(v[i]);
  return o;
}

static std::string with_commas(int64_t n) {
  std::string s = std::to_string(n), o;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) o += ',';
    o += s[i];
  }
  return o;
}

// ---- import -------------------------------------------------------------------------------------

void reconcile_target(const hf::HfConfig& src, Config& target, const ImportOptions& opt) {
  const ModelSpec& s = src.spec;
  const std::string tgt = target.source.empty() ? "target config" : target.source;
  auto mismatch = [&](const std::string& key, const std::string& ours, const std::string& hf_key, const std::string& theirs) {
    throw ConfigError(tgt + ": " + key + " = " + ours + " but " + src.path + " has " + hf_key + " = " + theirs +
                      " (the target's model section must describe the HF model)");
  };
  const ModelSection& m = target.model;
  if (m.layers != s.layers) mismatch("model.layers", std::to_string(m.layers), "num_hidden_layers", std::to_string(s.layers));
  if (m.d_model != s.d_model) mismatch("model.d_model", std::to_string(m.d_model), "hidden_size", std::to_string(s.d_model));
  if (m.heads != s.heads) mismatch("model.heads", std::to_string(m.heads), "num_attention_heads", std::to_string(s.heads));
  if (m.vocab_size != s.vocab) mismatch("model.vocab_size", std::to_string(m.vocab_size), "vocab_size", std::to_string(s.vocab));
  auto differs = [](double a, double b) { return std::abs(a - b) > 1e-9 * std::max(1.0, std::abs(b)); };
  auto num = [](double x) {
    std::ostringstream o;
    o << x;
    return o.str();
  };
  if (differs(m.rotary_pct, s.rotary_pct)) mismatch("model.rotary_pct", num(m.rotary_pct), "rotary_pct", num(s.rotary_pct));
  if (differs(m.rotary_base, s.rotary_base))
    mismatch("model.rotary_base", num(m.rotary_base), "rope_theta (rotary_emb_base)", num(s.rotary_base));
  if (differs(m.ln_eps, s.ln_eps)) mismatch("model.ln_eps", num(m.ln_eps), "layer_norm_eps", num(s.ln_eps));

  // MLP width: unchanged, or widened when kv.widen_mlp asks for it.
  if (target.kv.widen_mlp) {
    if (m.ffn == 0) {
      target.model.ffn = paper_widened_ffn(s, target.spec().kv);
    } else if (m.ffn < s.ffn) {
      mismatch("model.ffn", std::to_string(m.ffn), "intermediate_size", std::to_string(s.ffn) + " (widening cannot narrow)");
    }
  } else {
    const int ffn = m.ffn ? m.ffn : 4 * m.d_model;
    if (ffn != s.ffn)
      mismatch("model.ffn", std::to_string(ffn) + (m.ffn ? "" : " (default 4·d_model)"), "intermediate_size",
               std::to_string(s.ffn) + "; set model.ffn, or kv.widen_mlp = true to widen");
  }

  // Sources that already share K/V are loaded as they are: the plan must be theirs.
  if (opt.compat_paper && src.format != hf::Format::paper)
    throw ConfigError(src.path + ": --compat paper expects the seed paper's config (num_key_value_layers / "
                      "num_key_value_heads), but this is " + hf::format_name(src.format));
  if (!opt.compat_paper && src.format == hf::Format::paper)
    throw ConfigError(src.path + ": this is the seed paper's MLKV format (num_key_value_layers); import it with --compat paper");
  if (src.format != hf::Format::gpt_neox) {
    const KvPlan t = target.spec().kv;
    if (t.owner != s.kv.owner || t.kv_heads != s.kv.kv_heads)
      throw ConfigError(tgt + ": the KV plan " + t.name(m.heads) + " (owners " + join(t.owners()) + ") differs from " +
                        src.path + "'s " + s.kv.name(s.heads) + " (owners " + join(s.kv.owners()) +
                        "); use --set kv.owners=[" + join(s.kv.owners()) + "] --set kv.kv_heads=" +
                        std::to_string(s.kv.kv_heads));
    if (s.kv.kv_layers() != s.layers && t.rope_shared_keys != s.kv.rope_shared_keys)
      throw ConfigError(tgt + ": kv.rope_shared_keys must be " + (s.kv.rope_shared_keys ? "true" : "false") + " to load " +
                        src.path);
  }
}

std::string describe_import(const hf::HfConfig& src, const hf::WeightDir& w, const Config& target) {
  const ModelSpec& s = src.spec;
  const ModelSpec t = target.spec();
  std::ostringstream o;
  o << "source:     " << w.dir() << "  [" << hf::format_name(src.format) << ", " << w.dtypes() << "]\n"
    << "            layers " << s.layers << ", d_model " << s.d_model << ", heads " << s.heads << " (head_dim "
    << s.head_dim() << "), ffn " << s.ffn << ", vocab " << s.vocab << "\n"
    << "plan:       " << s.kv.name(s.heads) << "  ->  " << t.kv.name(t.heads)
    << (t.kv.rope_shared_keys ? "" : "  [rope_shared_keys = false: seed-paper compatibility]") << "\n";
  for (int own : t.kv.owners()) {
    o << "            KV layer " << own << " serves layers " << own;
    if (t.kv.group_top(own) > own) o << ".." << t.kv.group_top(own);
    o << "\n";
  }
  o << "KV heads:   kept " << t.kv.kv_layers() * t.kv.kv_heads << " of " << s.kv.kv_layers() * s.kv.kv_heads << " ("
    << t.kv.kv_heads << " per KV layer, pooled from " << s.kv.kv_heads / t.kv.kv_heads << " heads each; merge across a group: "
    << target.kv.merge << ")\n";
  if (t.ffn != s.ffn)
    o << "MLP:        ffn " << s.ffn << " -> " << t.ffn << " (widened by copying neurons; down columns split between copies)\n";
  o << "parameters: " << with_commas(ParamLayout(s).total_params()) << " -> " << with_commas(ParamLayout(t).total_params())
    << "\n"
    << "KV cache:   " << s.kv_cache_bytes_per_token(2) << " -> " << t.kv_cache_bytes_per_token(2)
    << " bytes per token in bf16 (" << s.kv_cache_bytes_per_token(4) << " -> " << t.kv_cache_bytes_per_token(4)
    << " in fp32)\n";
  return o.str();
}

std::string write_init_checkpoint(const std::string& out, const Config& target, const Converter& conv) {
  // One target tensor at a time (Converter::fill into the checkpoint writer's buffer): the peak is a
  // few tensors, never the fp32 model (core/hf/README.md).
  return save_checkpoint_streamed(
      out, target, TrainState{}, [&conv](const ParamView& v, float* dst) { conv.fill(v.name, dst); }, 0);
}

OpenedCheckpoint open_checkpoint(const std::string& path) {
  OpenedCheckpoint c;
  if (fs::exists(fs::path(path) / "state.json")) {
    c.dir = path;
  } else if (auto latest = find_latest(path)) {
    c.dir = *latest;
  } else {
    throw CheckpointError(path + ": not a checkpoint (no state.json) and holds no complete checkpoint");
  }
  const fs::path toml = fs::path(c.dir) / "config.toml";
  std::ifstream in(toml);
  if (!in) throw CheckpointError(toml.string() + ": cannot open");
  std::stringstream text;
  text << in.rdbuf();
  c.config = config_from_toml_string(text.str(), toml.string());
  c.weights = std::make_unique<OursFileSource>(c.config.spec(), (fs::path(c.dir) / "model.safetensors").string());
  return c;
}

// ---- export -------------------------------------------------------------------------------------

bool exports_as_plain_gpt_neox(const ModelSpec& s) {
  return s.kv.kv_layers() == s.layers && s.kv.kv_heads == s.heads;
}

std::string hf_config_json(const ModelSpec& s, safetensors::DType dtype, const HfProvenance& ids) {
  const bool plain = exports_as_plain_gpt_neox(s);
  const char* dt = dtype == safetensors::DType::BF16 ? "bfloat16" : "float32";
  nlohmann::ordered_json j;
  if (plain) {
    j["architectures"] = {"GPTNeoXForCausalLM"};
    j["model_type"] = "gpt_neox";
  } else {
    j["architectures"] = {"MlkvNeoXForCausalLM"};
    j["model_type"] = "mlkv_neox";
    j["auto_map"] = {{"AutoConfig", "configuration_mlkv.MlkvNeoXConfig"},
                     {"AutoModelForCausalLM", "modeling_mlkv.MlkvNeoXForCausalLM"}};
    j["num_key_value_heads"] = s.kv.kv_heads;
    j["kv_owners"] = s.kv.owners();
    j["rope_shared_keys"] = s.kv.rope_shared_keys;
  }
  j["vocab_size"] = s.vocab;
  j["hidden_size"] = s.d_model;
  j["num_hidden_layers"] = s.layers;
  j["num_attention_heads"] = s.heads;
  j["intermediate_size"] = s.ffn;
  j["hidden_act"] = "gelu";
  j["max_position_embeddings"] = s.max_seq_len;
  j["layer_norm_eps"] = s.ln_eps;
  // Both spellings of rotary: transformers 5 reads rope_parameters, 4.x reads the top-level keys.
  j["rotary_pct"] = s.rotary_pct;
  j["rotary_emb_base"] = s.rotary_base;
  if (plain)
    j["rope_parameters"] = {{"rope_type", "default"}, {"partial_rotary_factor", s.rotary_pct}, {"rope_theta", s.rotary_base}};
  j["use_parallel_residual"] = true;
  j["tie_word_embeddings"] = false;
  j["attention_bias"] = true;
  j["attention_dropout"] = 0.0;
  j["hidden_dropout"] = 0.0;
  j["initializer_range"] = 0.02;
  // The source's ids; without one, Pythia's tokenizer: <|endoftext|> = 0 begins and ends documents.
  j["bos_token_id"] = ids.bos_token_id;
  j["eos_token_id"] = ids.eos_token_id;
  if (ids.pad_token_id >= 0) j["pad_token_id"] = ids.pad_token_id;
  j["use_cache"] = true;
  j["dtype"] = dt;
  j["torch_dtype"] = dt;
  return j.dump(2) + "\n";
}

static void write_text(const fs::path& p, std::string_view text) {
  const fs::path tmp = p.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f.write(text.data(), static_cast<std::streamsize>(text.size()));
    if (!f) throw IoError(tmp.string() + ": write failed");
  }
  std::error_code ec;
  fs::rename(tmp, p, ec);
  if (ec) throw IoError(p.string() + ": rename failed: " + ec.message());
}

std::string export_hf(const TensorSource& src, const std::string& out_dir, const ExportOptions& opt) {
  using safetensors::DType;
  if (opt.dtype != DType::F32 && opt.dtype != DType::BF16) throw ConfigError("export: --dtype must be fp32 or bf16");
  const ModelSpec& s = src.spec();
  const ParamLayout layout(s);
  const bool plain = exports_as_plain_gpt_neox(s);
  // Refusals first, so a bad --tokenizer-from leaves no partial directory behind.
  const TokenizerFiles tokenizer =
      opt.tokenizer_from.empty() ? TokenizerFiles{} : prepare_tokenizer(opt.tokenizer_from, s, opt.source);
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw IoError(out_dir + ": cannot create: " + ec.message());

  const int64_t hd = s.head_dim(), H = s.heads;
  safetensors::Writer w;
  w.set_metadata("format", "pt");  // transformers refuses safetensors files without it
  for (const ParamView& v : layout.views()) {
    const std::string name = v.name;
    const size_t q = name.find("attn.qkv.");
    if (q == std::string::npos) {
      w.add_lazy(hf::hf_name(name), opt.dtype, v.shape, [&src, name](float* out) { src.read(name, out); });
      continue;
    }
    const int l = std::stoi(name.substr(7));
    const bool bias = name.ends_with(".bias");
    const int64_t cols = bias ? 1 : s.d_model;
    const std::string p = hf::layer_prefix(l) + "attention.", suffix = bias ? ".bias" : ".weight";
    const int64_t rows = v.shape[0];
    if (plain) {
      w.add_lazy(p + "query_key_value" + suffix, opt.dtype, v.shape, [&src, name, rows, cols, &s](float* out) {
        std::vector<float> ours(static_cast<size_t>(rows * cols));
        src.read(name, ours.data());
        hf::qkv_to_hf(out, ours.data(), s.heads, s.head_dim(), cols);
      });
      continue;
    }
    // Split q | k | v: the layout our modeling file (and the seed paper's) uses.
    auto slice = [&src, name, rows, cols](int64_t row0, int64_t nrows) {
      return [&src, name, rows, cols, row0, nrows](float* out) {
        std::vector<float> ours(static_cast<size_t>(rows * cols));
        src.read(name, ours.data());
        std::copy(ours.begin() + row0 * cols, ours.begin() + (row0 + nrows) * cols, out);
      };
    };
    auto shape = [&](int64_t r) { return bias ? std::vector<int64_t>{r} : std::vector<int64_t>{r, s.d_model}; };
    w.add_lazy(p + "query" + suffix, opt.dtype, shape(H * hd), slice(0, H * hd));
    if (s.kv.is_owner(l)) {
      const int64_t kvr = int64_t{s.kv.kv_heads} * hd;
      w.add_lazy(p + "key" + suffix, opt.dtype, shape(kvr), slice(H * hd, kvr));
      w.add_lazy(p + "value" + suffix, opt.dtype, shape(kvr), slice(H * hd + kvr, kvr));
    }
  }
  const fs::path dir(out_dir);
  w.write((dir / "model.safetensors").string());
  write_text(dir / "config.json", hf_config_json(s, opt.dtype, opt.source));

  std::string files = "model.safetensors, config.json";
  if (!plain) {
    for (const char* f : {"configuration_mlkv.py", "modeling_mlkv.py"}) {
      const std::string_view text = embedded_file(f);
      if (text.empty()) throw IoError(std::string("export: this build lacks the embedded ") + f + " (core/hf/embed.cmake)");
      write_text(dir / f, text);
      files += std::string(", ") + f;
    }
  }
  for (const auto& [name, text] : tokenizer.files) {
    write_text(dir / name, text);
    files += ", " + name;
  }
  if (!opt.source.generation_config.empty()) {
    write_text(dir / "generation_config.json", opt.source.generation_config);
    files += ", generation_config.json";
  }
  std::ostringstream o;
  o << "exported " << s.kv.name(s.heads) << " to " << out_dir << " as "
    << (plain ? "GPTNeoXForCausalLM (plain transformers)" : "MlkvNeoXForCausalLM (trust_remote_code=True)") << ", "
    << (opt.dtype == DType::BF16 ? "bf16" : "fp32") << "\nfiles: " << files << "\n"
    << "tokenizer: " << (tokenizer.from.empty() ? "none (--no-tokenizer)" : tokenizer.from) << "\n"
    << "token ids: bos " << opt.source.bos_token_id << ", eos " << opt.source.eos_token_id
    << (opt.source.source.empty() ? " (no HF source recorded: Pythia's)" : " (from " + opt.source.source + ")") << "\n";
  return o.str();
}

}  // namespace mlkv::convert
