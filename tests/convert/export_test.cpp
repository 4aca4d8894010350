// Export, and the whole HF → checkpoint → HF path on the CPU (what CI runs):
//   * the MHA round trip is bitwise: every tensor of the exported model.safetensors has the bytes of
//     the transformers save_pretrained original;
//   * an MLKV export equals the committed expected directory (tests/convert/fixtures/
//     export_mlkv_uneven, written by make_fixtures.py, which also loads it in transformers when it can),
//     and reads back through the importer bitwise;
//   * the seed paper's layout imports with --compat paper (parity with mlkv_compat is in parity_test).
#include <gtest/gtest.h>

#include "convert_test_util.h"
#include "core/checkpoint.h"
#include "core/config.h"
#include "core/convert.h"
#include "core/errors.h"

namespace mlkv {
namespace {

std::vector<float> read_all(const convert::TensorSource& s) {
  const ParamLayout layout(s.spec());
  std::vector<float> flat(layout.total(), 0.0f);
  for (const ParamView& v : layout.views()) s.read(v.name, flat.data() + v.offset);
  return flat;
}

// Same tensor names, dtypes, shapes and bytes.
void expect_same_tensors(const std::string& got_path, const std::string& want_path) {
  const safetensors::Reader got(got_path), want(want_path);
  ASSERT_EQ(got.tensors().size(), want.tensors().size()) << got_path << " vs " << want_path;
  for (const auto& w : want.tensors()) {
    const safetensors::TensorInfo* g = got.find(w.name);
    ASSERT_NE(g, nullptr) << got_path << " lacks " << w.name;
    EXPECT_EQ(g->dtype, w.dtype) << w.name;
    EXPECT_EQ(g->shape, w.shape) << w.name;
    EXPECT_TRUE(got.read_raw(w.name) == want.read_raw(w.name)) << w.name << " differs";
  }
  EXPECT_EQ(got.metadata().at("format"), "pt");
}

TEST(Export, HfToOursToHfIsBitwiseForMha) {
  const std::string dir = test::scratch_dir("mha");
  Config target = load_config(test::write_target_toml(dir, test::kHfMhaModel));
  const convert::HfSource src(test::fixture("hf_mha/hf"));
  convert::reconcile_target(src.config(), target, {});
  const convert::Converter conv(src, target.spec(), convert::Merge::mean);
  const std::string ck = convert::write_init_checkpoint(dir + "/ck", target, conv);

  // The trainer's loader accepts it: step 0, no optimizer moments, the converted weights.
  const CheckpointData loaded = load_checkpoint(dir + "/ck");
  EXPECT_EQ(loaded.state.step, 0);
  EXPECT_TRUE(loaded.m.empty());
  EXPECT_EQ(loaded.master, conv.materialize());
  EXPECT_EQ(loaded.config.spec().kv, target.spec().kv);

  const convert::OpenedCheckpoint opened = convert::open_checkpoint(dir + "/ck");
  EXPECT_EQ(opened.dir, ck);
  const std::string summary = convert::export_hf(*opened.weights, dir + "/hf", {});
  EXPECT_NE(summary.find("GPTNeoXForCausalLM"), std::string::npos) << summary;
  expect_same_tensors(dir + "/hf/model.safetensors", test::fixture("hf_mha/hf/model.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/hf/modeling_mlkv.py"));  // plain transformers suffices

  const nlohmann::json got = test::read_json(dir + "/hf/config.json"), want = test::read_json(test::fixture("hf_mha/hf/config.json"));
  for (const char* k : {"architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                        "intermediate_size", "vocab_size", "hidden_act", "layer_norm_eps", "use_parallel_residual",
                        "tie_word_embeddings", "max_position_embeddings", "attention_bias"})
    EXPECT_EQ(got[k], want[k]) << k;
  EXPECT_EQ(got["rope_parameters"]["partial_rotary_factor"], want["rope_parameters"]["partial_rotary_factor"]);
  EXPECT_EQ(got["rope_parameters"]["rope_theta"], want["rope_parameters"]["rope_theta"]);
  // And once more through the importer: the exported directory is a valid HF source.
  EXPECT_EQ(read_all(convert::HfSource(dir + "/hf")), read_all(src));
}

TEST(Export, MlkvMatchesTheCommittedExpectedDirectory) {
  const std::string dir = test::scratch_dir("mlkv");
  const nlohmann::json c = test::read_json(test::fixture("mlkv_uneven/case.json"));
  const convert::OursFileSource src(test::spec_from_case(c), test::fixture("mlkv_uneven/weights.safetensors"));
  const std::string summary = convert::export_hf(src, dir, {});
  EXPECT_NE(summary.find("trust_remote_code"), std::string::npos) << summary;

  const std::string want = test::conv_fixture("export_mlkv_uneven");
  expect_same_tensors(dir + "/model.safetensors", want + "/model.safetensors");
  EXPECT_EQ(test::read_json(dir + "/config.json"), test::read_json(want + "/config.json"));
  for (const char* f : {"configuration_mlkv.py", "modeling_mlkv.py"})
    EXPECT_EQ(test::read_text(dir + "/" + f), test::read_text(std::string(MLKV_SOURCE_DIR) + "/core/hf/" + f)) << f;

  // The export imports back bitwise, plan included.
  const convert::HfSource back(dir);
  EXPECT_EQ(back.config().format, hf::Format::mlkv);
  EXPECT_EQ(back.spec().kv, src.spec().kv);
  EXPECT_EQ(read_all(back), read_all(src));
}

TEST(Export, Bf16RoundsEveryTensor) {
  const std::string dir = test::scratch_dir("bf16");
  const nlohmann::json c = test::read_json(test::fixture("mlkv1_mqa/case.json"));
  const convert::OursFileSource src(test::spec_from_case(c), test::fixture("mlkv1_mqa/weights.safetensors"));
  convert::ExportOptions opt;
  opt.dtype = safetensors::DType::BF16;
  convert::export_hf(src, dir, opt);
  EXPECT_EQ(test::read_json(dir + "/config.json")["dtype"], "bfloat16");
  const convert::HfSource back(dir);
  EXPECT_EQ(back.weights().dtypes(), "BF16");
  const std::vector<float> got = read_all(back), exact = read_all(src);
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(got[i], safetensors::bf16_to_f32(safetensors::f32_to_bf16(exact[i]))) << i;
}

TEST(Export, TokenizerFilesAreCopiedWhenAsked) {
  const std::string dir = test::scratch_dir("tok");
  std::filesystem::create_directories(dir + "/src");
  test::write_text(dir + "/src/tokenizer.json", "{\"version\": \"1.0\"}");
  const nlohmann::json c = test::read_json(test::fixture("mlkv1_mqa/case.json"));
  const convert::OursFileSource src(test::spec_from_case(c), test::fixture("mlkv1_mqa/weights.safetensors"));
  convert::ExportOptions opt;
  opt.tokenizer_from = dir + "/src";
  convert::export_hf(src, dir + "/out", opt);
  EXPECT_EQ(test::read_text(dir + "/out/tokenizer.json"), "{\"version\": \"1.0\"}");
  opt.tokenizer_from = dir + "/out/nothing-here";
  EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::export_hf(src, dir + "/out2", opt); }, {"nothing-here", "tokenizer"}));
}

TEST(PaperCompat, ReadsThePapersLayoutAsRopeSharedKeysFalse) {
  const convert::HfSource src(test::conv_fixture("paper_mlkv"));
  EXPECT_EQ(src.config().format, hf::Format::paper);
  const ModelSpec want = test::spec_from_case(test::read_json(test::fixture("mlkv_compat/case.json")));
  EXPECT_EQ(src.spec().kv, want.kv);
  EXPECT_FALSE(src.spec().kv.rope_shared_keys);
  // Same numbers as the fixture in our naming (the buffers the paper saves are skipped).
  EXPECT_EQ(read_all(src), read_all(convert::OursFileSource(want, test::fixture("mlkv_compat/weights.safetensors"))));

  const std::string dir = test::scratch_dir("paper");
  const std::string model = "layers = 4\nd_model = 32\nheads = 4\nvocab_size = 64\nmax_seq_len = 64";
  convert::ImportOptions compat;
  compat.compat_paper = true;
  {  // the plan must be the paper's; the error says how to get it
    Config t = load_config(test::write_target_toml(dir, model, "[kv]\nkv_layers = 4\nkv_heads = 2\nrope_shared_keys = false\n"));
    EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::reconcile_target(src.config(), t, compat); },
                                               {"target.toml", "--set kv.owners=[0, 2]", "--set kv.kv_heads=2"}));
  }
  {  // without --compat paper
    Config t = load_config(test::write_target_toml(dir, model, "[kv]\nkv_layers = 2\nkv_heads = 2\nrope_shared_keys = false\n"));
    EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::reconcile_target(src.config(), t, {}); }, {"--compat paper"}));
  }
  {  // rope_shared_keys must be false
    Config t = load_config(test::write_target_toml(dir, model, "[kv]\nkv_layers = 2\nkv_heads = 2\n"));
    EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::reconcile_target(src.config(), t, compat); },
                                               {"rope_shared_keys must be false"}));
  }
  Config t = load_config(test::write_target_toml(dir, model, "[kv]\nkv_layers = 2\nkv_heads = 2\nrope_shared_keys = false\n"));
  convert::reconcile_target(src.config(), t, compat);
  const convert::Converter conv(src, t.spec(), convert::Merge::mean);
  EXPECT_EQ(conv.materialize(), read_all(src));  // loaded as it is

  // Exported again, it is an MlkvNeoX model that keeps the paper's semantics.
  convert::export_hf(src, dir + "/hf", {});
  EXPECT_EQ(test::read_json(dir + "/hf/config.json")["rope_shared_keys"], false);
}

TEST(OpenCheckpoint, RefusesWhatIsNotACheckpoint) {
  const std::string dir = test::scratch_dir("notck");
  EXPECT_TRUE(test::throws_with<CheckpointError>([&] { (void)convert::open_checkpoint(dir); }, {dir, "not a checkpoint"}));
}

}  // namespace
}  // namespace mlkv
