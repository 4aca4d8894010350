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

// A model of Pythia's vocabulary (the bundled tokenizer needs ids up to 50276), all zeros.
struct PythiaVocabModel {
  ModelSpec spec;
  std::vector<float> weights;
  convert::BufferSource source;
  PythiaVocabModel() : spec(make()), weights(ParamLayout(spec).total(), 0.0f), source(spec, weights.data()) {}
  static ModelSpec make() {
    ModelSpec s = test::spec_from_case(test::read_json(test::fixture("mlkv1_mqa/case.json")));
    s.vocab = 50304;
    return s;
  }
};

TEST(Export, WritesTheBundledTokenizerWithPythiasSpecialTokens) {
  const std::string dir = test::scratch_dir("tok_bundled");
  const PythiaVocabModel m;
  convert::ExportOptions opt;
  opt.tokenizer_from = convert::kBundledTokenizer;
  const std::string summary = convert::export_hf(m.source, dir, opt);
  EXPECT_EQ(test::read_text(dir + "/tokenizer.json"), test::read_text(std::string(MLKV_SOURCE_DIR) + "/data/tokenizer/gpt-neox-20b.json"));
  const nlohmann::json tc = test::read_json(dir + "/tokenizer_config.json"), sm = test::read_json(dir + "/special_tokens_map.json");
  for (const char* k : {"bos_token", "eos_token", "unk_token"}) {
    EXPECT_EQ(tc[k], "<|endoftext|>") << k;  // id 0 in GPT-NeoX's vocabulary
    EXPECT_EQ(sm[k], "<|endoftext|>") << k;
  }
  EXPECT_FALSE(tc.contains("pad_token"));
  EXPECT_EQ(tc["tokenizer_class"], "PreTrainedTokenizerFast");
  EXPECT_EQ(tc["model_max_length"], m.spec.max_seq_len);
  EXPECT_FALSE(std::filesystem::exists(dir + "/generation_config.json"));  // no HF source
  EXPECT_NE(summary.find("tokenizer: the bundled gpt-neox-20b tokenizer"), std::string::npos) << summary;
}

TEST(Export, TheSourcesTokenIdsAndGenerationConfigCarryOver) {
  const std::string dir = test::scratch_dir("tok_ids");
  const PythiaVocabModel m;
  convert::ExportOptions opt;
  opt.tokenizer_from = convert::kBundledTokenizer;
  opt.source.source = "somewhere";
  opt.source.bos_token_id = 1;  // <|padding|>: an odd choice, so nothing can pass by defaulting to 0
  opt.source.eos_token_id = 0;
  opt.source.pad_token_id = 1;
  opt.source.generation_config = "{\n  \"bos_token_id\": 1,\n  \"eos_token_id\": 0\n}\n";
  convert::export_hf(m.source, dir, opt);
  const nlohmann::json cfg = test::read_json(dir + "/config.json"), tc = test::read_json(dir + "/tokenizer_config.json");
  EXPECT_EQ(cfg["bos_token_id"], 1);
  EXPECT_EQ(cfg["eos_token_id"], 0);
  EXPECT_EQ(cfg["pad_token_id"], 1);
  EXPECT_EQ(tc["bos_token"], "<|padding|>");
  EXPECT_EQ(tc["eos_token"], "<|endoftext|>");
  EXPECT_EQ(tc["pad_token"], "<|padding|>");
  EXPECT_EQ(test::read_text(dir + "/generation_config.json"), opt.source.generation_config);
}

TEST(Export, TokenizerFromAFileOrADirectory) {
  const std::string dir = test::scratch_dir("tok_from");
  const PythiaVocabModel m;
  const std::string bundled = std::string(MLKV_SOURCE_DIR) + "/data/tokenizer/gpt-neox-20b.json";
  convert::ExportOptions opt;
  opt.tokenizer_from = bundled;  // a tokenizer.json under another name
  convert::export_hf(m.source, dir + "/file", opt);
  EXPECT_EQ(test::read_text(dir + "/file/tokenizer.json"), test::read_text(bundled));
  EXPECT_EQ(test::read_json(dir + "/file/tokenizer_config.json")["eos_token"], "<|endoftext|>");

  // A directory: its tokenizer_config.json is copied as it is, special_tokens_map.json written.
  std::filesystem::create_directories(dir + "/src");
  std::filesystem::copy_file(bundled, dir + "/src/tokenizer.json");
  test::write_text(dir + "/src/tokenizer_config.json", "{\"tokenizer_class\": \"GPTNeoXTokenizer\", \"eos_token\": \"<|endoftext|>\"}");
  opt.tokenizer_from = dir + "/src";
  convert::export_hf(m.source, dir + "/dir", opt);
  EXPECT_EQ(test::read_text(dir + "/dir/tokenizer_config.json"), test::read_text(dir + "/src/tokenizer_config.json"));
  EXPECT_EQ(test::read_json(dir + "/dir/special_tokens_map.json")["eos_token"], "<|endoftext|>");
}

TEST(Export, BadTokenizersAreRefusedBeforeAnythingIsWritten) {
  const std::string dir = test::scratch_dir("tok_bad");
  const PythiaVocabModel m;
  std::filesystem::create_directories(dir + "/empty");
  test::write_text(dir + "/nojson.json", "{\"model\": ");
  test::write_text(dir + "/noeos.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 5, \"b\": 6}}}");
  test::write_text(dir + "/big.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 50304}}}");
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {dir + "/missing", {"missing", "no such tokenizer file or directory", "gpt-neox-20b"}},
      {dir + "/empty", {"empty", "no tokenizer.json"}},
      {dir + "/nojson.json", {"nojson.json", "not a JSON object"}},
      {dir + "/noeos.json", {"noeos.json", "no token with id 0", "bos_token_id"}},
      {dir + "/big.json", {"big.json", "50304", "vocab_size"}},
  };
  for (const auto& [from, parts] : cases) {
    convert::ExportOptions opt;
    opt.tokenizer_from = from;
    EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::export_hf(m.source, dir + "/out", opt); }, parts)) << from;
    EXPECT_FALSE(std::filesystem::exists(dir + "/out")) << from << ": partial output";
  }
  // The bundled tokenizer does not fit a model with a small vocabulary.
  const nlohmann::json c = test::read_json(test::fixture("mlkv1_mqa/case.json"));
  const convert::OursFileSource small(test::spec_from_case(c), test::fixture("mlkv1_mqa/weights.safetensors"));
  convert::ExportOptions opt;
  opt.tokenizer_from = convert::kBundledTokenizer;
  EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::export_hf(small, dir + "/out", opt); }, {"bundled", "vocab_size", "--no-tokenizer"}));
  EXPECT_FALSE(std::filesystem::exists(dir + "/out"));
}

TEST(Export, ImportRecordsTheHfSourceAndATrainedRunFindsIt) {
  const std::string dir = test::scratch_dir("provenance");
  std::filesystem::create_directories(dir + "/hf");
  test::write_text(dir + "/hf/config.json", "{\"bos_token_id\": 3, \"eos_token_id\": [2, 9], \"pad_token_id\": null}");
  test::write_text(dir + "/hf/generation_config.json", "{\"bos_token_id\": 3, \"eos_token_id\": 2, \"max_length\": 77}");
  std::filesystem::create_directories(dir + "/init/step-00000000");
  convert::record_hf_source(dir + "/init", dir + "/hf");

  Config none;  // the imported checkpoint itself: hf_source.json sits beside its step directory
  const convert::HfProvenance own = convert::find_hf_source(dir + "/init/step-00000000", none);
  EXPECT_EQ(own.bos_token_id, 3);
  EXPECT_EQ(own.eos_token_id, 2);  // the first of several EOS ids
  EXPECT_EQ(own.pad_token_id, -1);
  EXPECT_NE(own.source.find("/hf"), std::string::npos) << own.source;
  EXPECT_EQ(nlohmann::json::parse(own.generation_config)["max_length"], 77);

  Config trained;  // a run elsewhere that started from it names it in train.init_from
  trained.train.init_from = dir + "/init";
  EXPECT_EQ(convert::find_hf_source(dir + "/run/checkpoints/step-00000010", trained).bos_token_id, 3);
  trained.train.init_from = dir + "/gone";
  const convert::HfProvenance lost = convert::find_hf_source(dir + "/run/checkpoints/step-00000010", trained);
  EXPECT_TRUE(lost.source.empty());
  EXPECT_EQ(lost.bos_token_id, 0);

  test::write_text(dir + "/hf/config.json", "{\"bos_token_id\": \"zero\"}");
  EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::record_hf_source(dir + "/init", dir + "/hf"); }, {"config.json", "bos_token_id"}));
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
