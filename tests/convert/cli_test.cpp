// mlkv-convert end to end: import prints what it did and writes a checkpoint the trainer loads at
// step 0; export writes an HF directory; bad command lines and inputs exit 2 with a clear message.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>

#include "convert_test_util.h"
#include "core/checkpoint.h"
#include "core/convert.h"

namespace mlkv {
namespace {

struct CliRun {
  int rc = -1;
  std::string out, err;
};

CliRun convert_cli(const std::string& args) {
  const std::string dir = test::scratch_dir("cli");
  const std::string cmd = std::string(MLKV_BINARY_DIR) + "/bin/mlkv-convert " + args + " > " + dir + "/out 2> " + dir + "/err";
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, test::read_text(dir + "/out"), test::read_text(dir + "/err")};
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(Cli, ImportConvertsAndExportWritesHf) {
  const std::string dir = test::scratch_dir("run");
  const std::string toml = test::write_target_toml(dir, test::kHfMhaModel, "[kv]\nkv_layers = 1\nkv_heads = 1\n");
  const CliRun imp = convert_cli("import --hf " + test::fixture("hf_mha/hf") + " --config " + toml + " --out " + dir +
                              "/ck --merge paper --widen-mlp");
  ASSERT_EQ(imp.rc, 0) << imp.err;
  for (const char* p : {"MHA-4", "MLKV-1", "KV layer 0 serves layers 0..1", "kept 1 of 4", "merge across a group: paper",
                        "ffn 128 -> ", "parameters: 31,616 -> ", "KV cache:   256 -> 64 bytes per token in bf16",
                        "step-00000000"})
    EXPECT_TRUE(has(imp.out, p)) << p << "\n" << imp.out;

  const CheckpointData ck = load_checkpoint(dir + "/ck");
  EXPECT_EQ(ck.state.step, 0);
  EXPECT_EQ(ck.config.kv.merge, "paper");
  EXPECT_TRUE(ck.config.kv.widen_mlp);
  const convert::HfSource src(test::fixture("hf_mha/hf"));
  EXPECT_EQ(ck.config.model.ffn, convert::paper_widened_ffn(src.spec(), ck.config.spec().kv));
  EXPECT_EQ(ck.master, convert::Converter(src, ck.config.spec(), convert::Merge::paper).materialize());

  const CliRun exp = convert_cli("export --ckpt " + dir + "/ck --out " + dir + "/hf --dtype bf16 --no-tokenizer");
  ASSERT_EQ(exp.rc, 0) << exp.err;
  EXPECT_TRUE(has(exp.out, "MlkvNeoXForCausalLM")) << exp.out;
  EXPECT_TRUE(has(exp.out, "trust_remote_code=True")) << exp.out;
  EXPECT_EQ(test::read_json(dir + "/hf/config.json")["dtype"], "bfloat16");
  EXPECT_TRUE(std::filesystem::exists(dir + "/hf/modeling_mlkv.py"));
  EXPECT_EQ(convert::HfSource(dir + "/hf").spec().ffn, ck.config.model.ffn);
  EXPECT_TRUE(std::filesystem::exists(dir + "/ck/hf_source.json"));  // import recorded its source

  // A tokenizer that is not there is bad input, found before anything is written.
  const CliRun bad = convert_cli("export --ckpt " + dir + "/ck --out " + dir + "/hf2 --tokenizer-from " + dir + "/none");
  EXPECT_EQ(bad.rc, 2) << bad.err;
  EXPECT_TRUE(has(bad.err, "no such tokenizer")) << bad.err;
  EXPECT_FALSE(std::filesystem::exists(dir + "/hf2"));
  // The default, the bundled Pythia tokenizer, does not fit this 96-token model: refused the same way.
  const CliRun small = convert_cli("export --ckpt " + dir + "/ck --out " + dir + "/hf2");
  EXPECT_EQ(small.rc, 2) << small.err;
  EXPECT_TRUE(has(small.err, "--no-tokenizer")) << small.err;
  EXPECT_FALSE(std::filesystem::exists(dir + "/hf2"));
}

TEST(Cli, BadInputsExitTwoWithAReason) {
  const std::string dir = test::scratch_dir("bad");
  const std::string hf = test::fixture("hf_mha/hf");
  const std::string good = test::write_target_toml(dir, test::kHfMhaModel);
  struct Case {
    std::string args;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {"", {"missing command", "usage:"}},
      {"frobnicate", {"unknown command 'frobnicate'"}},
      {"import --config " + good + " --out " + dir + "/x", {"import needs --hf and --config"}},
      {"import --hf " + hf + " --config " + good + " --out " + dir + "/x --merge max", {"kv.merge"}},
      {"import --hf " + hf + " --config " + good + " --out " + dir + "/x --compat pape", {"--compat takes 'paper'"}},
      {"import --hf " + hf + " --config " + good + " --out " + dir + "/x --set model.d_model=64 --set model.heads=4",
       {"model.d_model = 64", "hidden_size = 32"}},
      {"import --hf " + hf + " --config " + good + " --out " + dir + "/x --set kv.kv_heads=3", {"kv_heads", "3"}},
      {"import --hf /nonexistent --config " + good + " --out " + dir + "/x", {"/nonexistent", "config.json"}},
      {"import --hf " + hf + " --config " + good + " --out " + dir + "/x --compat paper", {"--compat paper", "gpt_neox"}},
      {"export --ckpt " + dir + " --out " + dir + "/y", {"not a checkpoint"}},
      {"export --ckpt " + dir + " --out " + dir + "/y --dtype fp16", {"--dtype takes fp32 or bf16"}},
      {"export --out " + dir + "/y", {"export needs --ckpt"}},
  };
  for (const Case& c : cases) {
    const CliRun r = convert_cli(c.args);
    EXPECT_EQ(r.rc, 2) << c.args << "\n" << r.err;
    for (const auto& p : c.expect) EXPECT_TRUE(has(r.err, p)) << c.args << ": lacks '" << p << "'\n" << r.err;
  }
  EXPECT_FALSE(std::filesystem::exists(dir + "/x"));  // nothing written for a failed import
}

}  // namespace
}  // namespace mlkv
