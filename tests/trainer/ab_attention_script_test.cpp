// scripts/ab_attention.sh (the attention switches' A/B runner) against a stand-in for
// mlkv-bench-attention that prints rows in its format from the switch's value: the runs come in
// order (unset, each value, unset again), the summary sums each run's rows, a failed run makes the
// script exit 1 naming it, and bad arguments exit 2 with the reason. No GPU needed.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "trainer_test_util.h"

namespace mlkv::test {
namespace {

std::string script() { return std::string(MLKV_SOURCE_DIR) + "/scripts/ab_attention.sh"; }

// Two shape rows a run; fwd ms = 0.1 + value / 100 (0.1 unset), bwd 0.5, total their sum. The
// value "fail" exits 3 after printing, as a crashed bench would.
std::string fake_bench(const TempDir& dir) {
  const std::string path = dir / "fake-bench";
  std::ofstream(path) << "#!/bin/bash\n"
                         "v=${MLKV_ATTN_L2_MIB:-0}\n"
                         "echo \"mlkv-bench-attention stand-in, args: $*\"\n"
                         "[ \"$v\" = fail ] && exit 3\n"
                         "f=$(awk -v v=$v 'BEGIN{printf \"%.3f\", 0.1 + v / 100}')\n"
                         "t=$(awk -v f=$f 'BEGIN{printf \"%.3f\", f + 0.5}')\n"
                         "echo \"B,H,KVH,T,hd   fwd ms\"\n"
                         "echo \"8,8,8,2048,256  $f  0.500  $t  400.0  200.0 |  0.250  1.300  1.550\"\n"
                         "echo \"8,8,1,2048,256  $f  0.500  $t  400.0  200.0 |  0.250  1.300  1.550\"\n";
  std::filesystem::permissions(path, std::filesystem::perms::owner_all);
  return path;
}

TEST(AbAttentionScript, RunsEachValueBetweenTwoUnsetRunsAndSumsTheRows) {
  TempDir dir("ab-attention");
  std::string out;
  ASSERT_EQ(run({"/bin/bash", script(), "MLKV_ATTN_L2_MIB", "20 40", "8,8,8,2048,256;8,8,1,2048,256",
                 fake_bench(dir)}, out), 0) << out;
  EXPECT_NE(out.find("args: --shapes 8,8,8,2048,256;8,8,1,2048,256 --iters 20"), std::string::npos) << out;
  const std::string table = "| unset | 0.200 | 1.000 | 1.200 |\n"
                            "| MLKV_ATTN_L2_MIB=20 | 0.600 | 1.000 | 1.600 |\n"
                            "| MLKV_ATTN_L2_MIB=40 | 1.000 | 1.000 | 2.000 |\n"
                            "| unset (again) | 0.200 | 1.000 | 1.200 |\n";
  EXPECT_NE(out.find(table), std::string::npos) << out;
}

TEST(AbAttentionScript, AFailedRunExits1NamingIt) {
  TempDir dir("ab-attention-fail");
  std::string out;
  EXPECT_EQ(run({"/bin/bash", script(), "MLKV_ATTN_L2_MIB", "32 fail", "8,8,8,2048,256", fake_bench(dir)}, out), 1)
      << out;
  EXPECT_NE(out.find("ab_attention: the run with MLKV_ATTN_L2_MIB=fail failed"), std::string::npos) << out;
  EXPECT_NE(out.find("| MLKV_ATTN_L2_MIB=32 | 0.840 |"), std::string::npos) << "the other runs still count\n" << out;
}

TEST(AbAttentionScript, BadArgumentsExit2WithTheReason) {
  TempDir dir("ab-attention-bad");
  std::string out;
  EXPECT_EQ(run({"/bin/bash", script(), "MLKV_ATTN_L2_MIB", "32"}, out), 2) << out;
  EXPECT_NE(out.find("scripts/ab_attention.sh VAR \"v1 v2 ...\" SHAPES [BIN]"), std::string::npos) << out;
  EXPECT_EQ(run({"/bin/bash", script(), "PATH", "1", "8,8,8,2048,256", fake_bench(dir)}, out), 2) << out;
  EXPECT_NE(out.find("VAR must be an MLKV_ switch, not 'PATH'"), std::string::npos) << out;
  EXPECT_EQ(run({"/bin/bash", script(), "MLKV_ATTN_L2_MIB", "1", "8,8,8,2048,256", dir / "no-such-bench"}, out), 2)
      << out;
  EXPECT_NE(out.find(dir / "no-such-bench" + " is missing"), std::string::npos) << out;
}

}  // namespace
}  // namespace mlkv::test
