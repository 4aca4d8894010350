// The decode peer (scripts/bench_decode_hf.py) on the CPU with a tiny MLKV model: mlkv-bench decode
// exports the model it benches and writes its rows, the peer appends hf_generate and torch_sdpa rows
// under the same header and labels, with sane numbers, and HF's cache really holds only the owner
// layers' K/V (its measured bytes per token equal the plan's). The interpreter is found as the
// interop tests find it (tests/hf/python_env.h): skipped without one, failed under CI=true.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "../convert/convert_test_util.h"
#include "../hf/python_env.h"
#include "core/config.h"

namespace mlkv {
namespace {

using Row = std::map<std::string, std::string>;

// One CSV line split at commas outside double quotes (the device column is quoted).
std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> out(1);
  bool quoted = false;
  for (char c : line) {
    if (c == '"') quoted = !quoted;
    else if (c == ',' && !quoted) out.emplace_back();
    else out.back() += c;
  }
  return out;
}

struct Csv {
  std::string header_line;
  std::vector<Row> rows;
};

Csv read_csv(const std::string& path) {
  std::ifstream f(path);
  Csv c;
  std::getline(f, c.header_line);
  const std::vector<std::string> names = csv_fields(c.header_line);
  for (std::string line; std::getline(f, line);) {
    const std::vector<std::string> v = csv_fields(line);
    EXPECT_EQ(v.size(), names.size()) << path << ": " << line;
    Row r;
    for (size_t i = 0; i < names.size() && i < v.size(); ++i) r[names[i]] = v[i];
    c.rows.push_back(r);
  }
  return c;
}

int sh(const std::string& cmd, const std::string& log) {
  return std::system((cmd + " > " + log + " 2>&1").c_str());
}

class DecodePeer : public ::testing::Test {
 protected:
  void SetUp() override { MLKV_REQUIRE_PYTHON("torch, transformers, safetensors"); }
  const std::string src = MLKV_SOURCE_DIR, bin = std::string(MLKV_BINARY_DIR) + "/bin/";
  const std::string config = src + "/configs/tiny/tiny_mlkv.toml";
  std::string peer(const std::string& dir, const std::string& extra) const {
    return test::python() + " " + src + "/scripts/bench_decode_hf.py --model " + dir + "/hf --device cpu --steps 3 " +
           "--warmup 1 --max-batch 2 " + extra;
  }
};

TEST_F(DecodePeer, AppendsSaneRowsUnderOurHeaderAndLabels) {
  const std::string dir = test::scratch_dir("decode_peer"), csv = dir + "/decode.csv", log = dir + "/run.log";
  const std::string ours = bin + "mlkv-bench decode " + config + " --set train.backend=cpu --memory-budget-gib 0.2 "
                           "--context 48 --steps 3 --warmup 1 --max-batch 2 --csv " + csv + " --export-hf " + dir + "/hf";
  ASSERT_EQ(sh(ours, log), 0) << ours << "\n" << test::read_text(log);
  const std::string cmd = peer(dir, "--csv " + csv);
  ASSERT_EQ(sh(cmd, log), 0) << cmd << "\n" << test::read_text(log);

  const Csv c = read_csv(csv);
  const ModelSpec spec = load_config(config).spec();
  const std::string plan = spec.kv.name(spec.heads);
  std::map<std::string, std::vector<int>> batches;
  for (const Row& r : c.rows) {
    const std::string& impl = r.at("impl");
    batches[impl].push_back(std::stoi(r.at("batch")));
    EXPECT_EQ(r.at("config"), config) << impl;
    EXPECT_EQ(r.at("plan"), plan) << impl;
    EXPECT_EQ(r.at("context"), "48") << impl;
    EXPECT_EQ(r.at("largest_batch"), "2") << impl;
    const double ms = std::stod(r.at("ms_per_step")), tok = std::stod(r.at("tokens_per_s"));
    EXPECT_TRUE(ms > 0 && std::isfinite(ms) && tok > 0 && std::isfinite(tok)) << impl << " " << ms << " " << tok;
    EXPECT_NEAR(tok, std::stoi(r.at("batch")) * 1e3 / ms, 1e-3 * tok) << impl;
    EXPECT_GT(std::stod(r.at("weights_gib")), 0.0) << impl;
    if (impl == "mlkv") continue;
    // bf16 K/V of the owner layers only, kv_heads each: what the plan needs, no more
    EXPECT_EQ(std::stoll(r.at("kv_bytes_per_token")), spec.kv_cache_bytes_per_token(2)) << impl;
    EXPECT_TRUE(r.at("workspace_gib").empty()) << impl;  // n/a for the peer
    EXPECT_NE(r.at("device").find("torch"), std::string::npos) << impl;
  }
  const std::vector<int> both{1, 2};
  EXPECT_EQ(batches["mlkv"], both);
  EXPECT_EQ(batches["hf_generate"], both);
  EXPECT_EQ(batches["torch_sdpa"], both);
  EXPECT_EQ(batches.size(), 3u) << "no CUDA-graph rows on the CPU";
  for (const Row& r : c.rows)
    if (r.at("impl") == "torch_sdpa") {
      EXPECT_GT(std::stod(r.at("attn_gb_s")), 0.0);
    }

  // Alone, into a new file, the peer writes the header mlkv-bench writes.
  const std::string fresh = dir + "/fresh.csv", alone = peer(dir, "--impl torch_sdpa --csv " + fresh);
  ASSERT_EQ(sh(alone, log), 0) << alone << "\n" << test::read_text(log);
  EXPECT_EQ(read_csv(fresh).header_line, c.header_line);
}

TEST_F(DecodePeer, RefusesAForeignCsvBeforeTiming) {
  const std::string dir = test::scratch_dir("decode_peer_bad"), log = dir + "/run.log";
  std::filesystem::create_directories(dir + "/hf");
  test::write_text(dir + "/hf/config.json", "{}");  // never read: the CSV is checked first
  test::write_text(dir + "/other.csv", "step,loss\n1,2.5\n");
  const std::string cmd = peer(dir, "--csv " + dir + "/other.csv");
  EXPECT_NE(sh(cmd, log), 0);
  const std::string out = test::read_text(log);
  EXPECT_NE(out.find(dir + "/other.csv"), std::string::npos) << out;
  EXPECT_NE(out.find("lacks the columns"), std::string::npos) << out;
  const std::string missing = peer(dir + "/nowhere", "--csv " + dir + "/x.csv");
  EXPECT_NE(sh(missing, log), 0);
  EXPECT_NE(test::read_text(log).find("nowhere/hf/config.json: missing"), std::string::npos) << test::read_text(log);
}

}  // namespace
}  // namespace mlkv
