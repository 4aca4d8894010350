// The mlkv-data command end to end: import a hand-written Megatron pair, inspect and verify
// it, and the exit code 2 with a message naming the file for bad input. Skips when the
// executable has not been built (test_data does not depend on it).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "tests/data/data_test_util.h"

namespace mlkv::data {
namespace {

const std::string kExe = std::string(MLKV_BINARY_DIR) + "/bin/mlkv-data";

// Runs a command line, returns its exit status and its stdout+stderr.
int run(const std::string& args, std::string& output) {
  output.clear();
  FILE* pipe = popen((kExe + " " + args + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void put(std::vector<uint8_t>& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<uint8_t>(value >> (8 * i)));
}

TEST(Cli, ImportInspectVerifyAndBadInput) {
  if (!std::filesystem::exists(kExe)) GTEST_SKIP() << kExe << " not built";
  test::ScratchDir dir;
  // 3 documents of 5, 3 and 4 uint16 tokens (code 8), EOD-terminated.
  std::vector<std::vector<uint16_t>> docs = {{10, 11, 12, 13, 0}, {20, 21, 0}, {30, 31, 32, 0}};
  std::vector<uint8_t> idx = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0}, bin;
  put(idx, 1, 8);
  put(idx, 8, 1);
  put(idx, 3, 8);
  put(idx, 4, 8);
  for (auto& d : docs) put(idx, d.size(), 4);
  uint64_t pointer = 0;
  for (auto& d : docs) put(idx, pointer, 8), pointer += 2 * d.size();
  for (uint64_t d : {0, 1, 2, 3}) put(idx, d, 8);
  for (auto& d : docs) for (uint16_t t : d) put(bin, t, 2);
  test::write_bytes(dir / "c.idx", idx);
  test::write_bytes(dir / "c.bin", bin);

  std::string out;
  ASSERT_EQ(run("import-megatron " + dir / "c" + " " + dir / "shards", out), 0) << out;
  EXPECT_NE(out.find("imported 12 tokens, 3 documents"), std::string::npos) << out;
  ASSERT_EQ(run("inspect " + dir / "shards", out), 0) << out;
  EXPECT_NE(out.find("tokens:          12"), std::string::npos) << out;
  EXPECT_NE(out.find("documents:       3"), std::string::npos) << out;
  EXPECT_NE(out.find("uint16"), std::string::npos) << out;
  EXPECT_NE(out.find("vocab_size:      50277"), std::string::npos) << out;
  EXPECT_NE(out.find("first tokens:    [10, 11, 12, 13, 0, 20, 21, 0, 30, 31, 32, 0]"),
            std::string::npos) << out;
  ASSERT_EQ(run("verify " + dir / "shards", out), 0) << out;
  EXPECT_NE(out.find("verified: 1 shards, 12 tokens, 0 errors"), std::string::npos) << out;
  EXPECT_EQ(run("verify " + dir / "shards --vocab 30", out), 2) << out;
  EXPECT_NE(out.find("token id 30 at token offset 8"), std::string::npos) << out;
  EXPECT_EQ(run("export-raw " + dir / "shards " + dir / "back.u16", out), 0) << out;
  std::vector<uint8_t> back = test::read_bytes(dir / "back.u16");
  EXPECT_EQ(back, bin);

  std::filesystem::remove(dir / "c.bin");
  EXPECT_EQ(run("import-megatron " + dir / "c" + " " + dir / "again", out), 2);
  EXPECT_NE(out.find("c.bin: file does not exist"), std::string::npos) << out;
  EXPECT_EQ(run("validate " + dir / "nothing --vocab 50304 --seq-len 8", out), 2);
  EXPECT_NE(out.find("nothing: dataset does not exist"), std::string::npos) << out;
  EXPECT_EQ(run("import-raw a b --dtype float", out), 2);
  EXPECT_EQ(run("inspect --bogus x", out), 2);
  EXPECT_EQ(run("tokenize --help", out), 0);
  EXPECT_NE(out.find("--split MODE"), std::string::npos);
}

}  // namespace
}  // namespace mlkv::data
