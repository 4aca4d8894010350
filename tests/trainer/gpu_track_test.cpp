// Issue 6 item 5: 200 steps on the bundled data (data/demo, the King James Bible through the
// GPT-NeoX tokenizer) track the CPU loss curve. The real executable trains the tiny MLKV-2 config
// twice, train.backend = cpu (fp32 reference) and cuda (bf16), from the same seed and data order;
// the logged losses must stay together all the way down. Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/backend.h"
#include "trainer_test_util.h"

namespace mlkv {
namespace {

// step → logged training loss, from a metrics.jsonl.
std::map<int64_t, double> train_losses(const std::string& metrics) {
  std::map<int64_t, double> out;
  for (const auto& j : test::metrics_rows(metrics))
    if (j.contains("loss") && j["loss"].is_number()) out[j["step"].get<int64_t>()] = j["loss"].get<double>();
  return out;
}

TEST(BundledData, TwoHundredCudaStepsTrackTheCpuLossCurve) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::string src = MLKV_SOURCE_DIR;
  test::TempDir dir("track");
  std::map<std::string, std::map<int64_t, double>> curves;
  for (const std::string backend : {"cpu", "cuda"}) {
    const std::string out = dir / backend;
    std::string log;
    const int code = test::run({test::bin("mlkv-train"), src + "/configs/tiny/tiny_mlkv.toml",
                                "--set", "data.path=" + src + "/data/demo/train", "--set", "data.val_path=" + src + "/data/demo/val",
                                "--set", "train.backend=" + backend, "--set", "train.steps=200",
                                "--set", "train.seq_len=64", "--set", "train.micro_batch=4",
                                "--set", "train.eval_interval=0", "--set", "optim.warmup_steps=10",
                                "--set", "log.interval=10", "--set", "log.dir=" + out,
                                "--set", "checkpoint.dir=" + out + "/checkpoints", "--set", "checkpoint.interval=0"},
                               log);
    ASSERT_EQ(code, 0) << backend << ":\n" << log;
    curves[backend] = train_losses(out + "/metrics.jsonl");
    ASSERT_GE(curves[backend].size(), 20u) << backend << ": too few logged losses\n" << log;
  }
  const auto &cpu = curves["cpu"], &gpu = curves["cuda"];
  double max_gap = 0;
  for (const auto& [step, lc] : cpu) {
    ASSERT_TRUE(gpu.count(step)) << "step " << step << " missing from the CUDA run";
    const double lg = gpu.at(step);
    max_gap = std::max(max_gap, std::abs(lg - lc) / lc);
    std::printf("  step %3lld  cpu %.4f  cuda %.4f\n", static_cast<long long>(step), lc, lg);
  }
  EXPECT_LT(cpu.rbegin()->second, cpu.begin()->second - 2.0) << "200 steps should lower the loss by nats";
  EXPECT_LT(max_gap, 0.02) << "largest relative gap between the CPU and CUDA loss curves";
}

}  // namespace
}  // namespace mlkv
