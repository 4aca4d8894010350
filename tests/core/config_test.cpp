// Config tests: the paper's owner rule, every shipped config, includes, --set overrides, the
// resolved-TOML round trip, a matrix of bad configs (each must name file:line: and the key), and the
// generated key reference in configs/README.md (set MLKV_UPDATE_DOCS=1 to rewrite it).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include "core/config.h"
#include "core/config_print.h"
#include "core/errors.h"
#include "core/param_layout.h"

namespace fs = std::filesystem;
using mlkv::Config;
using mlkv::ConfigError;
using mlkv::load_config;

namespace {

const fs::path kConfigs = fs::path(MLKV_SOURCE_DIR) / "configs";

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    static int n = 0;
    path_ = fs::temp_directory_path() / ("mlkv_config_test_" + std::to_string(getpid()) + "_" + std::to_string(n++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string write(const std::string& name, const std::string& text) const {
    const fs::path p = path_ / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
    return p.string();
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// The message of the ConfigError `f` throws; fails the test when it throws nothing or another type.
std::string config_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.exit_code(), mlkv::kExitBadInput);
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-ConfigError: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no ConfigError thrown";
  return "";
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Files under configs/ that only exist to be included: they lack required keys on purpose.
const std::set<std::string> kFragments = {"base/pythia.toml", "base/uptrain.toml"};

std::vector<std::string> shipped_configs() {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(kConfigs))
    if (e.path().extension() == ".toml") out.push_back(fs::relative(e.path(), kConfigs).string());
  std::sort(out.begin(), out.end());
  return out;
}

Config load_shipped(const std::string& rel, const std::vector<std::string>& sets = {}) {
  return load_config((kConfigs / rel).string(), sets);
}

const char* kMinimal = "[model]\nlayers = 12\nd_model = 768\nheads = 12\n[train]\nsteps = 10\n";

}  // namespace

// ---- The KV plan the configs derive ------------------------------------------------------------

TEST(ConfigKvPlan, PaperRuleOwners) {
  using mlkv::KvPlan;
  EXPECT_EQ(KvPlan::from_kv_layers(12, 4, 1).owners(), (std::vector<int>{0, 3, 6, 9}));
  EXPECT_EQ(KvPlan::from_kv_layers(12, 6, 1).owners(), (std::vector<int>{0, 2, 4, 6, 8, 10}));
  EXPECT_EQ(KvPlan::from_kv_layers(12, 2, 1).owners(), (std::vector<int>{0, 6}));
  EXPECT_EQ(KvPlan::from_kv_layers(12, 1, 1).owners(), (std::vector<int>{0}));
  EXPECT_EQ(KvPlan::from_kv_layers(12, 4, 1).owner, (std::vector<int>{0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9, 9}));
}

TEST(ConfigSpec, DefaultsResolve) {
  TempDir t;
  const Config c = load_config(t.write("c.toml", kMinimal));
  const mlkv::ModelSpec s = c.spec();
  EXPECT_EQ(s.ffn, 4 * 768);
  EXPECT_EQ(s.kv.kv_heads, 12);
  EXPECT_EQ(s.kv.kv_layers(), 12);
  EXPECT_TRUE(s.kv.rope_shared_keys);
  EXPECT_EQ(s.vocab, 50304);
  EXPECT_EQ(c.train.attention, "auto");  // the faster measured path per head dim (issue 15)
  EXPECT_EQ(c.source, t.path() / "c.toml");
}

TEST(ConfigSpec, OwnersWinOverKvLayersAndFlagsCarry) {
  TempDir t;
  const Config c = load_config(t.write("c.toml", std::string(kMinimal) +
                                                     "[kv]\nkv_layers = 6\nowners = [0, 5, 7]\nkv_heads = 4\n"
                                                     "rope_shared_keys = false\n"),
                               {"model.ffn=1000"});
  const mlkv::ModelSpec s = c.spec();
  EXPECT_EQ(s.kv.owners(), (std::vector<int>{0, 5, 7}));
  EXPECT_EQ(s.kv.kv_heads, 4);
  EXPECT_FALSE(s.kv.rope_shared_keys);
  EXPECT_EQ(s.ffn, 1000);
}

// ---- Shipped configs ---------------------------------------------------------------------------

TEST(ConfigShipped, Mlkv6HasPaperOwnersAnd1536Bytes) {
  const Config c = load_shipped("pythia160m_mlkv6.toml");
  const mlkv::ModelSpec s = c.spec();
  EXPECT_EQ(s.kv.owners(), (std::vector<int>{0, 2, 4, 6, 8, 10}));
  EXPECT_EQ(s.kv.kv_heads, 1);
  EXPECT_EQ(s.kv_cache_bytes_per_token(2), 1536);
  const std::string d = mlkv::describe_config(c);
  EXPECT_NE(d.find("MLKV-6 (kv_layers 6 x kv_heads 1)"), std::string::npos) << d;
  EXPECT_NE(d.find("owners 0, 2, 4, 6, 8, 10"), std::string::npos) << d;
  EXPECT_NE(d.find("1536 bytes/token"), std::string::npos) << d;
  EXPECT_NE(d.find("[0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10]"), std::string::npos) << d;
}

TEST(ConfigShipped, Mha144Has36864BytesAndPythiaCounts) {
  const Config c = load_shipped("pythia160m_mha144.toml");
  EXPECT_EQ(c.spec().kv_cache_bytes_per_token(2), 36864);
  const std::string d = mlkv::describe_config(c);
  EXPECT_NE(d.find("36864 bytes/token"), std::string::npos) << d;
  // Pythia-160M's published parameter count, and 6·N_matmul + 12·L·d·T by hand:
  // N_matmul = 50304·768 + 12·(3 + 1 + 8)·768² = 123568128; 6·N + 12·12·768·2048 = 967901184.
  EXPECT_NE(d.find("162322944"), std::string::npos) << d;
  EXPECT_NE(d.find("967901184"), std::string::npos) << d;
}

TEST(ConfigShipped, TheNine160mPlansMatchDesignTable) {
  struct Row { const char* file; const char* name; int kv_layers, kv_heads; };
  const Row rows[] = {{"mha144", "MHA-144", 12, 12}, {"gqa48", "GQA-48", 12, 4},  {"mlkv48", "MLKV-48", 4, 12},
                      {"mqa12", "MQA-12", 12, 1},    {"mlkv12", "MLKV-12", 4, 3}, {"mlkv6", "MLKV-6", 6, 1},
                      {"mlkv4", "MLKV-4", 4, 1},     {"mlkv2", "MLKV-2", 2, 1},   {"mlkv1", "MLKV-1", 1, 1}};
  for (const Row& r : rows) {
    const Config c = load_shipped(std::string("pythia160m_") + r.file + ".toml");
    const mlkv::ModelSpec s = c.spec();
    EXPECT_EQ(s.layers, 12) << r.file;
    EXPECT_EQ(s.d_model, 768) << r.file;
    EXPECT_EQ(s.heads, 12) << r.file;
    EXPECT_EQ(s.kv.kv_layers(), r.kv_layers) << r.file;
    EXPECT_EQ(s.kv.kv_heads, r.kv_heads) << r.file;
    EXPECT_EQ(s.kv.name(12).rfind(std::string(r.name) + " ", 0), 0u) << s.kv.name(12);
    EXPECT_EQ(s.kv_cache_bytes_per_token(2), 2 * r.kv_layers * r.kv_heads * 64 * 2) << r.file;
    EXPECT_DOUBLE_EQ(c.optim.lr, 6e-4) << r.file;
    EXPECT_EQ(c.train.steps, 7150) << r.file;  // base/uptrain.toml wins over base/pythia.toml
  }
}

TEST(ConfigShipped, PythiaSizesMatchDesign) {
  struct Size { const char* name; int layers, d, heads; int64_t vocab; double lr; int tp; };
  const Size sizes[] = {{"70m", 6, 512, 8, 50304, 1e-3, 1},         {"160m", 12, 768, 12, 50304, 6e-4, 1},
                        {"410m", 24, 1024, 16, 50304, 3e-4, 1},     {"1b", 16, 2048, 8, 50304, 2.5e-4, 1},
                        {"1.4b", 24, 2048, 16, 50304, 2e-4, 1},     {"2.8b", 32, 2560, 32, 50304, 1.6e-4, 1},
                        {"6.9b", 32, 4096, 32, 50432, 1.2e-4, 2},   {"12b", 36, 5120, 40, 50688, 1.2e-4, 4}};
  for (const Size& z : sizes) {
    const Config c = load_shipped(std::string("base/pythia") + z.name + ".toml");
    EXPECT_EQ(c.model.layers, z.layers) << z.name;
    EXPECT_EQ(c.model.d_model, z.d) << z.name;
    EXPECT_EQ(c.model.heads, z.heads) << z.name;
    EXPECT_EQ(c.model.vocab_size, z.vocab) << z.name;
    EXPECT_DOUBLE_EQ(c.optim.lr, z.lr) << z.name;
    EXPECT_EQ(c.parallel.tp, z.tp) << z.name;
    // Pythia's recipe, from base/pythia.toml.
    EXPECT_DOUBLE_EQ(c.optim.beta1, 0.9);
    EXPECT_DOUBLE_EQ(c.optim.beta2, 0.95);
    EXPECT_DOUBLE_EQ(c.optim.eps, 1e-8);
    EXPECT_DOUBLE_EQ(c.optim.weight_decay, 0.1);
    EXPECT_DOUBLE_EQ(c.optim.grad_clip, 1.0);
    EXPECT_DOUBLE_EQ(c.optim.warmup_fraction, 0.01);
    EXPECT_DOUBLE_EQ(c.optim.min_lr_ratio, 0.1);
    EXPECT_EQ(c.optim.schedule, "cosine");
    EXPECT_EQ(c.train.seq_len, 2048);
    EXPECT_EQ(c.train.steps, 143000);
    // 1024 sequences per step on one 8-GPU node.
    EXPECT_EQ(int64_t{c.train.micro_batch} * c.train.grad_accum * (8 / c.parallel.tp), 1024) << z.name;
  }
}

TEST(ConfigShipped, LargerMlkvPlans) {
  const mlkv::ModelSpec b1 = load_shipped("pythia1b_mlkv.toml").spec();
  EXPECT_EQ(b1.kv.owners(), (std::vector<int>{0, 2, 4, 6, 8, 10, 12, 14}));
  EXPECT_EQ(b1.kv.kv_heads, 1);
  EXPECT_EQ(b1.kv_cache_bytes_per_token(2), 8192);
  const Config c28 = load_shipped("pythia2.8b_mlkv16_tp2.toml");
  EXPECT_EQ(c28.parallel.tp, 2);
  EXPECT_EQ(c28.spec().kv.kv_layers(), 16);
  EXPECT_EQ(c28.spec().kv_cache_bytes_per_token(2), 5120);
  EXPECT_EQ(int64_t{c28.train.micro_batch} * c28.train.grad_accum * (8 / c28.parallel.tp), 1024);
}

TEST(ConfigShipped, TinyConfigsUseDemoData) {
  for (const char* f : {"tiny/tiny_mha.toml", "tiny/tiny_mlkv.toml"}) {
    const Config c = load_shipped(f);
    EXPECT_EQ(c.model.layers, 4) << f;
    EXPECT_EQ(c.model.d_model, 128) << f;
    // The demo runs on the GPU when there is one: the head dim must be one the CUDA attention takes.
    EXPECT_EQ(c.spec().head_dim(), 64) << f;
    EXPECT_EQ(c.model.vocab_size, 50304) << f;
    EXPECT_LE(c.train.seq_len, 128) << f;
    EXPECT_EQ(c.train.backend, "auto") << f;
    EXPECT_EQ(c.data.path, "data/demo/train") << f;
    EXPECT_EQ(c.data.val_path, "data/demo/val") << f;
    EXPECT_EQ(c.log.dir.rfind("runs/", 0), 0u) << f;
    EXPECT_EQ(c.checkpoint.dir.rfind("runs/", 0), 0u) << f;
  }
  EXPECT_EQ(load_shipped("tiny/tiny_mlkv.toml").spec().kv.owners(), (std::vector<int>{0, 2}));
  EXPECT_EQ(load_shipped("tiny/tiny_mlkv.toml").spec().kv.kv_heads, 1);
}

TEST(ConfigShipped, EveryConfigLoadsAndFragmentsAreIncomplete) {
  const std::vector<std::string> files = shipped_configs();
  ASSERT_GE(files.size(), 24u);
  for (const std::string& f : files) {
    if (kFragments.count(f)) {
      EXPECT_NE(config_error([&] { load_shipped(f); }).find("missing required key"), std::string::npos) << f;
      continue;
    }
    try {
      const Config c = load_shipped(f);
      EXPECT_FALSE(mlkv::describe_config(c).empty()) << f;
    } catch (const std::exception& e) {
      ADD_FAILURE() << f << ": " << e.what();
    }
  }
}

// configs/README.md lists every runnable config with its plan and cache size; keep it true.
TEST(ConfigShipped, ReadmeTableMatchesConfigs) {
  const std::string readme = read_text(kConfigs / "README.md");
  for (const std::string& f : shipped_configs()) {
    if (f.rfind("base/", 0) == 0) continue;
    const mlkv::ModelSpec s = load_shipped(f).spec();
    std::string owners;
    for (int o : s.kv.owners()) owners += (owners.empty() ? "" : ", ") + std::to_string(o);
    const std::string row = "| `" + f + "` | " + s.kv.name(s.heads) + " | " + owners + " | " +
                            std::to_string(s.kv_cache_bytes_per_token(2)) + " |";
    EXPECT_NE(readme.find(row), std::string::npos) << "configs/README.md lacks the row:\n" << row;
  }
}

// ---- Includes ----------------------------------------------------------------------------------

TEST(ConfigInclude, LaterFilesWinAndTheIncluderWinsLast) {
  TempDir t;
  t.write("base/root.toml", std::string(kMinimal) + "[optim]\nlr = 0.1\nbeta1 = 0.5\n[data]\npath = \"root\"\n");
  t.write("base/a.toml", "include = \"root.toml\"\n[optim]\nlr = 0.2\n[log]\ninterval = 7\n");
  t.write("b.toml", "[optim]\nlr = 0.3\nbeta2 = 0.6\n[log]\ninterval = 8\n");
  const Config c =
      load_config(t.write("main.toml", "include = [\"base/a.toml\", \"b.toml\"]\n[optim]\nbeta2 = 0.7\n"));
  EXPECT_DOUBLE_EQ(c.optim.lr, 0.3);     // b.toml, listed after a.toml
  EXPECT_DOUBLE_EQ(c.optim.beta1, 0.5);  // root.toml, untouched by the others
  EXPECT_DOUBLE_EQ(c.optim.beta2, 0.7);  // main.toml beats its includes
  EXPECT_EQ(c.log.interval, 8);
  EXPECT_EQ(c.data.path, "root");
  EXPECT_EQ(c.model.layers, 12);
}

TEST(ConfigInclude, PathsAreRelativeToTheIncludingFileAndDiamondsAreFine) {
  TempDir t;
  t.write("x/common.toml", kMinimal);
  t.write("x/left.toml", "include = \"common.toml\"\n[train]\nseed = 1\n");
  t.write("x/right.toml", "include = \"common.toml\"\n[train]\nseed = 2\n");
  const std::string main = t.write("deep/er/main.toml", "include = [\"../../x/left.toml\", \"../../x/right.toml\"]\n");
  const fs::path cwd = fs::current_path();
  fs::current_path("/");
  const Config c = load_config(main);
  fs::current_path(cwd);
  EXPECT_EQ(c.train.seed, 2u);
  EXPECT_EQ(c.model.heads, 12);
}

// ---- --set overrides ---------------------------------------------------------------------------

TEST(ConfigOverride, ValuesParseAsTomlAndBareStringsWork) {
  const Config c = load_shipped("pythia160m_mha144.toml",
                                {"kv.owners=[0,3,6,9]", "train.backend=cpu", "optim.lr=1e-4", "kv.kv_heads = 2",
                                 "data.path=some/dir/shard_*.h5", "model.name=\"quoted name\"", "optim.weight_decay=1",
                                 "train.steps=5", "train.steps=6", "data.shuffle=false", "train.init_from="});
  EXPECT_EQ(c.kv.owners, (std::vector<int>{0, 3, 6, 9}));
  EXPECT_EQ(c.spec().kv.kv_cache_bytes_per_token(64, 2), 2 * 4 * 2 * 64 * 2);
  EXPECT_EQ(c.train.backend, "cpu");
  EXPECT_DOUBLE_EQ(c.optim.lr, 1e-4);
  EXPECT_EQ(c.data.path, "some/dir/shard_*.h5");
  EXPECT_EQ(c.model.name, "quoted name");
  EXPECT_DOUBLE_EQ(c.optim.weight_decay, 1.0);  // an integer is fine for a float key
  EXPECT_EQ(c.train.steps, 6);                  // the last --set wins
  EXPECT_FALSE(c.data.shuffle);
  EXPECT_EQ(c.train.init_from, "");
}

TEST(ConfigOverride, ErrorsNameTheArgument) {
  const std::string cfg = (kConfigs / "pythia160m_mha144.toml").string();
  std::string m = config_error([&] { load_config(cfg, {"model.layers"}); });
  EXPECT_NE(m.find("--set 'model.layers'"), std::string::npos) << m;
  EXPECT_NE(m.find("section.key=value"), std::string::npos) << m;
  m = config_error([&] { load_config(cfg, {"model.layrs=3"}); });
  EXPECT_NE(m.find("--set 'model.layrs=3'"), std::string::npos) << m;
  EXPECT_NE(m.find("did you mean model.layers"), std::string::npos) << m;
  m = config_error([&] { load_config(cfg, {"model.layers=twelve"}); });
  EXPECT_NE(m.find("--set 'model.layers=twelve'"), std::string::npos) << m;
  m = config_error([&] { load_config(cfg, {"optim.beta1=1"}); });
  EXPECT_NE(m.find("optim.beta1"), std::string::npos) << m;
  EXPECT_NE(m.find("[0, 1)"), std::string::npos) << m;
  m = config_error([&] { load_config(cfg, {"train.backend=tpu"}); });
  EXPECT_NE(m.find("auto, cpu, cuda"), std::string::npos) << m;
  m = config_error([&] { load_config(cfg, {"kv.kv_heads=5"}); });
  EXPECT_NE(m.find("--set 'kv.kv_heads=5'"), std::string::npos) << m;
  EXPECT_NE(m.find("divide"), std::string::npos) << m;
}

// ---- Resolved TOML -----------------------------------------------------------------------------

TEST(ConfigRoundTrip, ResolvedTomlReadsBackEqual) {
  std::vector<Config> configs;
  for (const std::string& f : shipped_configs())
    if (!kFragments.count(f)) configs.push_back(load_shipped(f));
  configs.push_back(load_shipped("tiny/tiny_mlkv.toml",
                                 {"model.name=\"quote \\\" back\\\\slash tab\\t é\"", "kv.owners=[0, 1, 3]",
                                  "optim.lr=0.1", "optim.eps=3e-30", "optim.min_lr_ratio=0.123456789012345678", "log.peak_flops=989e12", "train.seed=18446744",
                                  "model.rotary_base=1e4", "kv.rope_shared_keys=false", "data.val_fraction=0.3"}));
  for (const Config& c : configs) {
    const std::string toml = mlkv::config_to_toml(c);
    Config back = mlkv::config_from_toml_string(toml, "resolved");
    EXPECT_EQ(back.source, "resolved");
    back.source = c.source;
    EXPECT_TRUE(back == c) << c.source << "\n" << toml << "\n---\n" << mlkv::config_to_toml(back);
  }
  EXPECT_EQ(configs.back().model.name, "quote \" back\\slash tab\t é");
}

TEST(ConfigRoundTrip, ResolvedTomlListsEveryKeyOnce) {
  const std::string toml = mlkv::config_to_toml(load_shipped("pythia160m_mlkv6.toml"));
  const std::string doc = mlkv::config_doc_markdown();
  int keys = 0, lines = 0;
  std::istringstream doc_in(doc), in(toml);
  for (std::string l; std::getline(doc_in, l);) keys += l.rfind("| `", 0) == 0;
  for (std::string l; std::getline(in, l);) lines += l.find(" = ") != std::string::npos;
  EXPECT_EQ(lines, keys);
  EXPECT_GE(keys, 50);
}

// ---- Bad configs -------------------------------------------------------------------------------

struct BadCase {
  const char* name;
  std::string text;         // main.toml
  int line;                 // expected line in `at`
  std::string key;          // must appear in the message ("" for pure syntax errors)
  std::string detail;       // must appear in the message
  std::string at = "main.toml";
  std::vector<std::pair<std::string, std::string>> others = {};  // extra files
};

TEST(ConfigErrors, MatrixNamesFileLineAndKey) {
  const std::string ok = kMinimal;  // lines 1-6; case lines start at 7
  const std::vector<BadCase> cases = {
      {"unknown key", ok + "[kv]\nkv_head = 2\n", 8, "kv.kv_head", "did you mean kv.kv_heads?"},
      {"key in wrong section", ok + "[optim]\nsteps = 3\n", 8, "optim.steps", "did you mean train.steps?"},
      {"unknown section", ok + "[modle]\nlayers = 3\n", 7, "modle", "did you mean [model]?"},
      {"unknown top-level key", "layers = 3\n" + ok, 1, "layers", "did you mean model.layers?"},
      {"unknown nested table", ok + "[model.extra]\nx = 1\n", 7, "model.extra", "unknown key"},
      {"string for float", ok + "[optim]\nlr = \"fast\"\n", 8, "optim.lr", "expected a number, got a string"},
      {"float for int", "[model]\nlayers = 12.5\nd_model = 768\nheads = 12\n[train]\nsteps = 10\n", 2,
       "model.layers", "expected an integer, got a float"},
      {"int for bool", ok + "[data]\nshuffle = 1\n", 8, "data.shuffle", "expected true or false"},
      {"table for string", ok + "[data]\npath = { a = 1 }\n", 8, "data.path", "expected a string, got a table"},
      {"missing required in section", "[model]\nlayers = 12\nd_model = 768\n[train]\nsteps = 10\n", 1,
       "model.heads", "missing required key"},
      {"missing required section", "[model]\nlayers = 12\nd_model = 768\nheads = 12\n", 1, "train.steps",
       "missing required key"},
      {"int out of range", "[model]\nlayers = 0\nd_model = 768\nheads = 12\n[train]\nsteps = 10\n", 2,
       "model.layers", "allowed [1, 1024]"},
      {"huge int", "[model]\nlayers = 99999999999\nd_model = 768\nheads = 12\n[train]\nsteps = 10\n", 2,
       "model.layers", "out of range"},
      {"float out of range", ok + "[optim]\nbeta2 = 1.0\n", 8, "optim.beta2", "allowed [0, 1)"},
      {"below minimum", ok + "[checkpoint]\nkeep_last = 0\n", 8, "checkpoint.keep_last", "allowed >= 1"},
      {"negative seed", ok + "seed = -1\n", 7, "train.seed", "allowed >= 0"},
      {"bad choice", ok + "backend = \"tpu\"\n", 7, "train.backend", "not one of: auto, cpu, cuda"},
      {"kv_heads not dividing heads", ok + "[kv]\nkv_heads = 5\n", 8, "kv.kv_heads", "does not divide model.heads"},
      {"owners repeat", ok + "[kv]\nowners = [0, 4, 4]\n", 8, "kv.owners", "strictly increasing"},
      {"owners not from 0", ok + "[kv]\nowners = [1, 4]\n", 8, "kv.owners", "start at 0"},
      {"owner beyond layers", ok + "[kv]\nowners = [0, 6, 12]\n", 8, "kv.owners", "is not a layer"},
      {"owner of wrong type", ok + "[kv]\nowners = [0, \"3\"]\n", 8, "kv.owners", "expected an integer"},
      {"kv_layers > layers", ok + "[kv]\nkv_layers = 13\n", 8, "kv.kv_layers", "exceeds model.layers"},
      {"d_model not multiple of heads", "[model]\nlayers = 12\nd_model = 770\nheads = 12\n[train]\nsteps = 10\n",
       3, "model.d_model", "not a multiple of model.heads"},
      {"table defined twice", ok + "[model]\n", 7, "", "TOML syntax error"},
      {"odd rotary dims", "[model]\nlayers = 2\nd_model = 64\nheads = 1\nrotary_pct = 0.3\n[train]\nsteps = 1\n",
       5, "model.rotary_pct", "must be even"},
      {"seq_len beyond max", ok + "seq_len = 4096\n", 7, "train.seq_len", "exceeds model.max_seq_len"},
      {"tp not dividing heads", ok + "[kv]\nkv_heads = 1\n[parallel]\ntp = 8\n", 10, "parallel.tp",
       "must divide model.heads = 12"},
      {"tp not dividing kv_heads", ok + "[kv]\nkv_heads = 6\n[parallel]\ntp = 4\n", 10, "parallel.tp",
       "multiple of kv_heads = 6"},
      {"syntax error", ok + "seed = = 3\n", 7, "", "TOML syntax error"},
      {"duplicate key", ok + "steps = 11\n", 7, "", "TOML syntax error"},
      {"section as value", "model = 3\n" + ok.substr(ok.find("[train]")), 1, "model", "expected a table [model]"},
      {"include of wrong type", "include = 3\n" + ok, 1, "include", "expected a file name"},
      {"missing include", "include = [\"nope.toml\"]\n" + ok, 1, "include", "nope.toml"},
      {"include cycle", "include = \"b.toml\"\n" + ok, 1, "include", "include cycle", "b.toml",
       {{"b.toml", "include = \"main.toml\"\n"}}},
      {"syntax error in base", "include = \"base.toml\"\n" + ok, 2, "", "TOML syntax error", "base.toml",
       {{"base.toml", "[optim]\nlr = 1e\n"}}},
      {"wrong type in base", "include = \"base.toml\"\n" + ok, 2, "optim.lr", "expected a number", "base.toml",
       {{"base.toml", "[optim]\nlr = true\n"}}},
  };
  ASSERT_GE(cases.size(), 15u);
  for (const BadCase& bc : cases) {
    TempDir t;
    for (const auto& [name, text] : bc.others) t.write(name, text);
    const std::string main = t.write("main.toml", bc.text);
    const std::string m = config_error([&] { load_config(main); });
    const std::string at = (t.path() / bc.at).string() + ":" + std::to_string(bc.line) + ":";
    EXPECT_NE(m.find(at), std::string::npos) << bc.name << ": expected '" << at << "' in: " << m;
    EXPECT_NE(m.find(bc.key), std::string::npos) << bc.name << ": expected key '" << bc.key << "' in: " << m;
    EXPECT_NE(m.find(bc.detail), std::string::npos) << bc.name << ": expected '" << bc.detail << "' in: " << m;
    // A column follows the line.
    const size_t p = m.find(at);
    if (p != std::string::npos) {
      EXPECT_TRUE(std::isdigit(static_cast<unsigned char>(m[p + at.size()]))) << m;
    }
  }
}

TEST(ConfigErrors, MissingFileIsNamed) {
  const std::string m = config_error([] { load_config("/nonexistent/dir/x.toml"); });
  EXPECT_NE(m.find("/nonexistent/dir/x.toml"), std::string::npos) << m;
  EXPECT_NE(m.find("no such file"), std::string::npos) << m;
}

// Every prefix of a real config, and byte flips all through it, either load or throw ConfigError.
TEST(ConfigErrors, DamagedFilesNeverCrash) {
  const std::string text = read_text(kConfigs / "base/tiny.toml");
  TempDir t;
  t.write("base/pythia.toml", read_text(kConfigs / "base/pythia.toml"));
  int errors = 0, loaded = 0;
  auto attempt = [&](const std::string& body) {
    const std::string p = t.write("base/tiny.toml", body);
    try {
      load_config(p);
      ++loaded;
    } catch (const ConfigError&) {
      ++errors;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "non-ConfigError " << e.what() << " for:\n" << body;
    }
  };
  attempt(text);
  EXPECT_EQ(loaded, 1);
  for (size_t n = 0; n < text.size(); n += 3) attempt(text.substr(0, n));
  const char flips[] = {'=', '[', '"', '\n', '\0', '\xff', ']', '.', '9', '-'};
  for (size_t i = 0; i < text.size(); i += 5) {
    std::string s = text;
    s[i] = flips[i % sizeof flips];
    attempt(s);
  }
  EXPECT_GT(errors, 100);
  EXPECT_GT(loaded, 1);  // flips inside comments are harmless
}

// ---- Documentation -----------------------------------------------------------------------------

// configs/README.md carries config_doc_markdown() between markers. Regenerate with
// `MLKV_UPDATE_DOCS=1 test_core --gtest_filter=ConfigDoc.*` or `mlkv-train --config-doc`.
TEST(ConfigDoc, ReadmeKeyReferenceIsGenerated) {
  const fs::path readme = kConfigs / "README.md";
  std::string text = read_text(readme);
  const std::string begin = "<!-- BEGIN KEYS -->\n", end = "<!-- END KEYS -->";
  const size_t b = text.find(begin), e = text.find(end);
  ASSERT_NE(b, std::string::npos) << "no " << begin << " in " << readme;
  ASSERT_NE(e, std::string::npos) << "no " << end << " in " << readme;
  const std::string current = text.substr(b + begin.size(), e - b - begin.size());
  const std::string generated = mlkv::config_doc_markdown();
  if (current != generated && std::getenv("MLKV_UPDATE_DOCS")) {
    text.replace(b + begin.size(), e - b - begin.size(), generated);
    std::ofstream(readme) << text;
    GTEST_SKIP() << "rewrote " << readme;
  }
  EXPECT_EQ(current, generated) << "configs/README.md is stale: run MLKV_UPDATE_DOCS=1 test_core "
                                   "--gtest_filter=ConfigDoc.* (or mlkv-train --config-doc)";
}

TEST(ConfigDoc, EverySectionAndRequiredKeyAppears) {
  const std::string doc = mlkv::config_doc_markdown();
  for (const char* s : {"model", "kv", "train", "optim", "data", "checkpoint", "log", "parallel"})
    EXPECT_NE(doc.find(std::string("### [") + s + "]"), std::string::npos) << s;
  for (const char* k : {"| `model.layers` |", "| `model.d_model` |", "| `model.heads` |", "| `train.steps` |"}) {
    const size_t p = doc.find(k);
    ASSERT_NE(p, std::string::npos) << k;
    EXPECT_NE(doc.substr(p, doc.find('\n', p) - p).find("**required**"), std::string::npos) << k;
  }
  EXPECT_NE(doc.find("`cosine`, `constant`, `linear`"), std::string::npos);
}
