// parallel.comm_timeout_s, the deadline of every collective (MPI and NCCL), was called
// parallel.nccl_timeout_s: checkpoints hold config.toml files written with the old name, so it
// still reads, as the new key. (The timeout itself is tried under mpirun: tests/trainer/rank_fault_test.cpp.)
#include <gtest/gtest.h>

#include "core/config.h"
#include "core/errors.h"

namespace mlkv {
namespace {

const std::string kModel = "[model]\nlayers = 2\nd_model = 32\nheads = 4\n[train]\nsteps = 1\n";

TEST(CommTimeout, DefaultsToTenMinutesAndIsRangeChecked) {
  EXPECT_EQ(config_from_toml_string(kModel, "t.toml").parallel.comm_timeout_s, 600.0);
  EXPECT_EQ(config_from_toml_string(kModel + "[parallel]\ncomm_timeout_s = 7.5\n", "t.toml").parallel.comm_timeout_s, 7.5);
  try {
    config_from_toml_string(kModel + "[parallel]\ncomm_timeout_s = 0.0\n", "t.toml");
    FAIL() << "a zero timeout was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("parallel.comm_timeout_s"), std::string::npos) << e.what();
  }
}

TEST(CommTimeout, TheOldNameStillReadsAsTheNewKey) {
  const Config c = config_from_toml_string(kModel + "[parallel]\nnccl_timeout_s = 42.0\n", "old.toml");
  EXPECT_EQ(c.parallel.comm_timeout_s, 42.0);
  // The resolved TOML (what a new checkpoint holds) has the new name only.
  const std::string toml = config_to_toml(c);
  EXPECT_NE(toml.find("comm_timeout_s = 42"), std::string::npos) << toml;
  EXPECT_EQ(toml.find("nccl_timeout_s"), std::string::npos) << toml;
}

}  // namespace
}  // namespace mlkv
