// The HF side of import: config.json variants, name and fused-QKV mapping, shards, 16-bit sources,
// ignored buffers, and the bad inputs that must fail clearly (missing tensors, wrong shapes, a config
// that does not match the weights, kv_heads that do not divide the heads, a target config that does
// not describe the HF model).
#include <gtest/gtest.h>

#include "convert_test_util.h"
#include "core/config.h"
#include "core/convert.h"
#include "core/errors.h"

namespace mlkv {
namespace {

using nlohmann::json;
using safetensors::DType;

struct Tensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;
  DType dtype = DType::F32;
};

std::vector<Tensor> fixture_tensors() {
  const safetensors::Reader r(test::fixture("hf_mha/hf/model.safetensors"));
  std::vector<Tensor> out;
  for (const auto& t : r.tensors()) out.push_back({t.name, t.shape, r.read_f32(t.name)});
  return out;
}

json fixture_config() { return test::read_json(test::fixture("hf_mha/hf/config.json")); }

void write_tensors(const std::string& path, const std::vector<Tensor>& ts) {
  safetensors::Writer w;
  w.set_metadata("format", "pt");
  for (const Tensor& t : ts) {
    if (t.dtype == DType::BF16)
      w.add_bf16_from_f32(t.name, t.data.data(), t.shape);
    else if (t.dtype == DType::F16)
      w.add_f16_from_f32(t.name, t.data.data(), t.shape);
    else
      w.add_f32(t.name, t.data.data(), t.shape);
  }
  w.write(path);
}

std::string make_hf_dir(const std::string& name, const json& config, const std::vector<Tensor>& ts) {
  const std::string dir = test::scratch_dir(name);
  test::write_text(dir + "/config.json", config.dump(2));
  write_tensors(dir + "/model.safetensors", ts);
  return dir;
}

std::vector<float> read_all(const convert::TensorSource& s) {
  const ParamLayout layout(s.spec());
  std::vector<float> flat(layout.total(), 0.0f);
  for (const ParamView& v : layout.views()) s.read(v.name, flat.data() + v.offset);
  return flat;
}

TEST(HfNames, OurNamesMapOntoGptNeoX) {
  EXPECT_EQ(hf::hf_name("embed_in.weight"), "gpt_neox.embed_in.weight");
  EXPECT_EQ(hf::hf_name("layers.7.ln1.bias"), "gpt_neox.layers.7.input_layernorm.bias");
  EXPECT_EQ(hf::hf_name("layers.0.ln2.weight"), "gpt_neox.layers.0.post_attention_layernorm.weight");
  EXPECT_EQ(hf::hf_name("layers.11.attn.dense.weight"), "gpt_neox.layers.11.attention.dense.weight");
  EXPECT_EQ(hf::hf_name("layers.3.mlp.up.bias"), "gpt_neox.layers.3.mlp.dense_h_to_4h.bias");
  EXPECT_EQ(hf::hf_name("layers.3.mlp.down.weight"), "gpt_neox.layers.3.mlp.dense_4h_to_h.weight");
  EXPECT_EQ(hf::hf_name("final_ln.weight"), "gpt_neox.final_layer_norm.weight");
  EXPECT_EQ(hf::hf_name("embed_out.weight"), "embed_out.weight");
  EXPECT_THROW(hf::hf_name("layers.0.attn.qkv.weight"), CheckpointError);
  EXPECT_TRUE(hf::is_ignored_buffer("gpt_neox.layers.0.attention.bias"));
  EXPECT_TRUE(hf::is_ignored_buffer("gpt_neox.layers.0.attention.masked_bias"));
  EXPECT_TRUE(hf::is_ignored_buffer("gpt_neox.layers.0.attention.rotary_emb.inv_freq"));
  EXPECT_FALSE(hf::is_ignored_buffer("gpt_neox.layers.0.attention.dense.bias"));
}

TEST(HfNames, FusedQkvRowOrder) {
  // H = 2, hd = 2: HF rows are [q0 k0 v0 | q1 k1 v1] per head, ours [q0 q1 | k0 k1 | v0 v1].
  const int H = 2, hd = 2;
  const int64_t expect[12] = {0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11};
  for (int64_t r = 0; r < 12; ++r) EXPECT_EQ(hf::hf_qkv_row(r, H, hd), expect[r]) << r;
  std::vector<float> hf_w(12 * 3), ours(12 * 3), back(12 * 3);
  for (size_t i = 0; i < hf_w.size(); ++i) hf_w[i] = static_cast<float>(i);
  hf::qkv_from_hf(ours.data(), hf_w.data(), H, hd, 3);
  EXPECT_EQ(ours[2 * 3 + 1], hf_w[6 * 3 + 1]);  // our row 2 = q head 1 elem 0 = HF row 6
  hf::qkv_to_hf(back.data(), ours.data(), H, hd, 3);
  EXPECT_EQ(back, hf_w);
}

TEST(HfConfig, ReadsTransformers5AndOlderRotaryKeys) {
  const hf::HfConfig c = hf::read_config(test::fixture("hf_mha/hf"));
  EXPECT_EQ(c.format, hf::Format::gpt_neox);
  EXPECT_EQ(c.spec.layers, 2);
  EXPECT_EQ(c.spec.d_model, 32);
  EXPECT_EQ(c.spec.heads, 2);
  EXPECT_EQ(c.spec.ffn, 128);
  EXPECT_EQ(c.spec.vocab, 96);
  EXPECT_EQ(c.spec.rotary_pct, 0.25);
  EXPECT_EQ(c.spec.rot_dims(), 4);
  EXPECT_EQ(c.spec.kv.kv_layers(), 2);

  json old = fixture_config();
  old.erase("rope_parameters");
  old["rotary_pct"] = 0.5;
  old["rotary_emb_base"] = 500;
  const std::string dir = make_hf_dir("old", old, fixture_tensors());
  const hf::HfConfig o = hf::read_config(dir);
  EXPECT_EQ(o.spec.rotary_pct, 0.5);
  EXPECT_EQ(o.spec.rotary_base, 500.0);
}

TEST(HfConfig, PaperConfigUsesThePaperOwnerRule) {
  EXPECT_EQ(hf::paper_owners(12, 4), (std::vector<int>{0, 3, 6, 9}));
  EXPECT_EQ(hf::paper_owners(12, 6), (std::vector<int>{0, 2, 4, 6, 8, 10}));
  EXPECT_EQ(hf::paper_owners(5, 3), (std::vector<int>{0, 1, 3}));
  // The paper computes int((i+1) * (L / n)) in floating point, which is not always our integer
  // floor((i+1)·L / n): the first disagreement is L = 30, n = 22 (its 12th owner is 14, ours 15). So
  // --compat paper uses the paper's rule. For every Pythia depth the two agree.
  EXPECT_EQ(hf::paper_owners(30, 22)[11], 14);
  EXPECT_EQ(KvPlan::from_kv_layers(30, 22, 1).owners()[11], 15);
  for (int L : {6, 12, 16, 24, 32, 36})
    for (int n = 1; n <= L; ++n) EXPECT_EQ(hf::paper_owners(L, n), KvPlan::from_kv_layers(L, n, 1).owners()) << L << "/" << n;
}

struct BadConfig {
  const char* name;
  std::function<void(json&)> edit;
  std::vector<std::string> expect;
};

void PrintTo(const BadConfig& c, std::ostream* os) { *os << c.name; }

class HfConfigBad : public ::testing::TestWithParam<BadConfig> {};

TEST_P(HfConfigBad, RefusedNamingFileAndKey) {
  json c = fixture_config();
  GetParam().edit(c);
  const std::string dir = make_hf_dir(GetParam().name, c, fixture_tensors());
  std::vector<std::string> parts = GetParam().expect;
  parts.push_back(dir + "/config.json");
  EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::HfSource s(dir); }, parts));
}

INSTANTIATE_TEST_SUITE_P(
    Configs, HfConfigBad,
    ::testing::Values(
        BadConfig{"relu", [](json& c) { c["hidden_act"] = "relu"; }, {"hidden_act", "'relu'"}},
        BadConfig{"sequential", [](json& c) { c["use_parallel_residual"] = false; }, {"use_parallel_residual"}},
        BadConfig{"tied", [](json& c) { c["tie_word_embeddings"] = true; }, {"tie_word_embeddings"}},
        BadConfig{"no_bias", [](json& c) { c["attention_bias"] = false; }, {"attention_bias"}},
        BadConfig{"llama", [](json& c) { c["model_type"] = "llama"; }, {"model_type", "'llama'"}},
        BadConfig{"no_layers", [](json& c) { c.erase("num_hidden_layers"); }, {"num_hidden_layers", "missing"}},
        BadConfig{"string_heads", [](json& c) { c["num_attention_heads"] = "2"; }, {"num_attention_heads", "integer"}},
        BadConfig{"scaled_rope", [](json& c) { c["rope_parameters"]["rope_type"] = "linear"; }, {"rope_type"}},
        // The paper's format with kv_heads that do not divide the heads.
        BadConfig{"kv_heads_3",
                  [](json& c) {
                    c["num_key_value_heads"] = 3;
                    c["num_key_value_layers"] = 2;
                  },
                  {"kv_heads = 3", "divide heads = 2"}},
        BadConfig{"kv_mlp", [](json& c) { c["use_key_value_mlp"] = true; }, {"use_key_value_mlp"}}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(HfSource, ReadsTheFixtureInOurLayout) {
  const convert::HfSource src(test::fixture("hf_mha/hf"));
  const nlohmann::json c = test::read_json(test::fixture("hf_mha/case.json"));
  const convert::OursFileSource ours(test::spec_from_case(c), test::fixture("hf_mha/weights.safetensors"));
  EXPECT_EQ(read_all(src), read_all(ours));  // bitwise: only a permutation of rows
}

TEST(HfSource, ShardedDirectoryEqualsSingleFile) {
  const std::vector<Tensor> all = fixture_tensors();
  const std::string dir = test::scratch_dir("sharded");
  test::write_text(dir + "/config.json", fixture_config().dump());
  std::vector<Tensor> a(all.begin(), all.begin() + all.size() / 2), b(all.begin() + all.size() / 2, all.end());
  write_tensors(dir + "/model-00001-of-00002.safetensors", a);
  write_tensors(dir + "/model-00002-of-00002.safetensors", b);
  json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", json::object()}};
  for (const Tensor& t : a) index["weight_map"][t.name] = "model-00001-of-00002.safetensors";
  for (const Tensor& t : b) index["weight_map"][t.name] = "model-00002-of-00002.safetensors";
  test::write_text(dir + "/model.safetensors.index.json", index.dump());
  EXPECT_EQ(read_all(convert::HfSource(dir)), read_all(convert::HfSource(test::fixture("hf_mha/hf"))));

  // A shard index from the internet may not point outside the directory, nor lie about a shard.
  json evil = index;
  evil["weight_map"][a[0].name] = "../model-00001-of-00002.safetensors";
  test::write_text(dir + "/model.safetensors.index.json", evil.dump());
  EXPECT_TRUE(test::throws_with<CheckpointError>([&] { convert::HfSource s(dir); }, {"index.json", "not a file name"}));
  json lie = index;
  lie["weight_map"][a[0].name] = "model-00002-of-00002.safetensors";
  test::write_text(dir + "/model.safetensors.index.json", lie.dump());
  EXPECT_TRUE(test::throws_with<CheckpointError>([&] { convert::HfSource s(dir); }, {a[0].name, "lacks it"}));
}

TEST(HfSource, Bf16AndF16SourcesAndIgnoredBuffers) {
  for (DType dt : {DType::BF16, DType::F16}) {
    std::vector<Tensor> ts = fixture_tensors();
    for (Tensor& t : ts) t.dtype = dt;
    // Real Pythia checkpoints carry these buffers; they hold no parameters.
    ts.push_back({"gpt_neox.layers.0.attention.bias", {1, 1, 4, 4}, std::vector<float>(16, 1.0f)});
    ts.push_back({"gpt_neox.layers.0.attention.masked_bias", {}, {-1e9f}});
    ts.push_back({"gpt_neox.layers.1.attention.rotary_emb.inv_freq", {2}, {1.0f, 0.01f}});
    const std::string dir = make_hf_dir(dt == DType::BF16 ? "bf16" : "f16", fixture_config(), ts);
    const convert::HfSource src(dir);
    EXPECT_EQ(src.weights().dtypes(), dt == DType::BF16 ? "BF16" : "F16");
    const std::vector<float> got = read_all(src), exact = read_all(convert::HfSource(test::fixture("hf_mha/hf")));
    for (size_t i = 0; i < got.size(); ++i) {
      const float want = dt == DType::BF16 ? safetensors::bf16_to_f32(safetensors::f32_to_bf16(exact[i]))
                                           : safetensors::f16_to_f32(safetensors::f32_to_f16(exact[i]));
      ASSERT_EQ(got[i], want) << i;
    }
  }
}

TEST(HfSource, MissingTensorWrongShapeAndMismatchedConfig) {
  const std::vector<Tensor> all = fixture_tensors();
  {  // missing
    std::vector<Tensor> ts;
    for (const Tensor& t : all)
      if (t.name != "gpt_neox.layers.1.mlp.dense_4h_to_h.weight") ts.push_back(t);
    const std::string dir = make_hf_dir("missing", fixture_config(), ts);
    EXPECT_TRUE(test::throws_with<CheckpointError>([&] { convert::HfSource s(dir); },
                                                   {dir, "missing tensor 'gpt_neox.layers.1.mlp.dense_4h_to_h.weight'"}));
  }
  {  // wrong shape
    std::vector<Tensor> ts = all;
    for (Tensor& t : ts)
      if (t.name == "gpt_neox.layers.0.attention.dense.bias") t = {t.name, {31}, std::vector<float>(31)};
    const std::string dir = make_hf_dir("shape", fixture_config(), ts);
    EXPECT_TRUE(test::throws_with<CheckpointError>(
        [&] { convert::HfSource s(dir); },
        {"model.safetensors", "'gpt_neox.layers.0.attention.dense.bias'", "[31]", "[32]", "config.json"}));
  }
  {  // config.json says 1 layer, the weights hold 2
    json c = fixture_config();
    c["num_hidden_layers"] = 1;
    const std::string dir = make_hf_dir("layers", c, all);
    EXPECT_TRUE(test::throws_with<CheckpointError>([&] { convert::HfSource s(dir); },
                                                   {"unexpected tensor 'gpt_neox.layers.1.", "config.json"}));
  }
  {  // config.json says d = 64
    json c = fixture_config();
    c["hidden_size"] = 64;
    const std::string dir = make_hf_dir("width", c, all);
    EXPECT_TRUE(test::throws_with<CheckpointError>([&] { convert::HfSource s(dir); },
                                                   {"gpt_neox.embed_in.weight", "[96, 32]", "[96, 64]"}));
  }
  {  // the paper's format claiming 1 KV layer while layer 1 holds its own key/value
    json c = fixture_config();
    c["num_key_value_layers"] = 1;
    c["num_key_value_heads"] = 2;
    std::vector<Tensor> ts;
    for (const Tensor& t : all) {
      if (t.name.find("query_key_value") == std::string::npos) {
        ts.push_back(t);
        continue;
      }
      const std::string p = t.name.substr(0, t.name.find("query_key_value"));
      const std::string suffix = t.name.ends_with("weight") ? ".weight" : ".bias";
      const int64_t cols = t.shape.size() == 2 ? t.shape[1] : 1, rows = 32;
      for (const char* part : {"query", "key", "value"})
        ts.push_back({p + part + suffix, t.shape.size() == 2 ? std::vector<int64_t>{rows, cols} : std::vector<int64_t>{rows},
                      std::vector<float>(t.data.begin(), t.data.begin() + rows * cols)});
    }
    const std::string dir = make_hf_dir("paper_extra", c, ts);
    EXPECT_TRUE(test::throws_with<CheckpointError>([&] { convert::HfSource s(dir); },
                                                   {"unexpected tensor 'gpt_neox.layers.1.attention.key.", "KV plan"}));
  }
  {  // no weights at all, but a pickle
    const std::string dir = test::scratch_dir("pickle");
    test::write_text(dir + "/config.json", fixture_config().dump());
    test::write_text(dir + "/pytorch_model.bin", "PK");
    EXPECT_TRUE(test::throws_with<CheckpointError>([&] { convert::HfSource s(dir); }, {dir, "pytorch_model.bin", "safe_serialization"}));
  }
  EXPECT_TRUE(test::throws_with<CheckpointError>([&] { convert::HfSource s("/nonexistent/dir"); }, {"/nonexistent/dir", "config.json"}));
}

std::string target_toml(const std::string& dir, const std::string& extra) {
  return test::write_target_toml(dir, test::kHfMhaModel, extra);
}

TEST(Reconcile, TargetMustDescribeTheHfModel) {
  const hf::HfConfig src = hf::read_config(test::fixture("hf_mha/hf"));
  const std::string dir = test::scratch_dir("reconcile");
  {
    Config t = load_config(target_toml(dir, ""), {"model.d_model=64", "model.heads=4"});
    EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::reconcile_target(src, t, {}); },
                                               {"target.toml", "model.d_model = 64", "hidden_size = 32", "config.json"}));
  }
  {
    Config t = load_config(target_toml(dir, ""), {"model.vocab_size=50304"});
    EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::reconcile_target(src, t, {}); },
                                               {"model.vocab_size = 50304", "vocab_size = 96"}));
  }
  {
    Config t = load_config(target_toml(dir, ""), {"model.ffn=100"});
    EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::reconcile_target(src, t, {}); },
                                               {"model.ffn = 100", "intermediate_size = 128", "widen"}));
  }
  {
    Config t = load_config(target_toml(dir, ""), {"model.rotary_pct=0.5"});
    EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::reconcile_target(src, t, {}); }, {"model.rotary_pct"}));
  }
  {  // a plan whose kv_heads do not divide the heads never gets this far
    EXPECT_TRUE(test::throws_with<ConfigError>([&] { (void)load_config(target_toml(dir, "[kv]\nkv_heads = 3\n")); },
                                               {"target.toml", "kv_heads"}));
  }
  {  // widening picks the paper's width when model.ffn is unset
    Config t = load_config(target_toml(dir, "[kv]\nkv_layers = 1\nkv_heads = 1\nwiden_mlp = true\n"));
    convert::reconcile_target(src, t, {});
    EXPECT_EQ(t.model.ffn, convert::paper_widened_ffn(src.spec, t.spec().kv));
    EXPECT_GT(t.model.ffn, 128);
  }
  {  // --compat paper on a plain GPT-NeoX directory
    Config t = load_config(target_toml(dir, "[kv]\nrope_shared_keys = false\n"));
    convert::ImportOptions opt;
    opt.compat_paper = true;
    EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::reconcile_target(src, t, opt); }, {"--compat paper", "gpt_neox"}));
  }
}

}  // namespace
}  // namespace mlkv
