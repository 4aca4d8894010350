// The training loop in-process: the loss falls on a learnable stream (issue 2 item 8); k steps +
// resume + N−k steps equals N steps bit for bit (weights and every loss); a stop signal
// checkpoints mid-run and the resume continues exactly; non-finite steps are skipped and K in a
// row stop the run with kExitBadSteps; metrics.jsonl and TensorBoard agree with the run.
#include "core/trainer.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <cmath>
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/checkpoint.h"
#include "core/errors.h"
#include "core/param_layout.h"
#include "core/signals.h"
#include "core/tensorboard.h"
#include "trainer_test_util.h"

namespace mlkv {
namespace {

namespace fs = std::filesystem;

bool bitwise_equal(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}
bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TrainerOptions options(const test::TempDir& dir, const std::vector<std::string>& overrides = {}) {
  TrainerOptions o;
  o.config = load_config(test::tiny_config(dir), overrides);
  return o;
}

TEST(Trainer, LossFallsOnALearnableStream) {
  test::TempDir dir("falls");
  TrainerOptions o = options(dir, {"train.steps=60", "train.eval_interval=20", "checkpoint.interval=0"});
  o.make_source = [](const SourceSpec& s) { return make_repeating_source(128, 23, 5, s); };
  const TrainResult r = train(o);
  ASSERT_EQ(r.exit_code, kExitOk);
  ASSERT_EQ(r.losses.size(), 60u);
  const double first = r.losses.front(), last = r.losses.back();
  EXPECT_NEAR(first, std::log(128.0), 0.5);  // an untrained model is near uniform
  EXPECT_LT(last, 0.5 * first) << "first " << first << " last " << last;
  EXPECT_LT(r.last_val_loss, 0.5 * first);
  EXPECT_TRUE(fs::exists(dir / "ckpt/step-00000060/model.safetensors"));
}

TEST(Trainer, LossFallsOnTheBundledData) {
  // The demo's MLKV-2 config on the bundled King James Bible shards, shortened: 30 steps of 4 x 32 tokens.
  const std::string src = MLKV_SOURCE_DIR;
  if (!fs::exists(src + "/data/demo/train")) GTEST_SKIP() << "no data/demo";
  test::TempDir dir("demo");
  TrainerOptions o;
  o.config = load_config(src + "/configs/tiny/tiny_mlkv.toml",
                         {"data.path=" + src + "/data/demo/train", "data.val_path=" + src + "/data/demo/val",
                          "train.steps=30", "train.seq_len=32", "train.micro_batch=4", "train.eval_interval=0",
                          "train.eval_batches=2", "train.backend=cpu", "train.threads=1", "optim.warmup_steps=5",
                          "checkpoint.dir=" + dir / "ckpt", "log.dir=" + dir / "log"});
  const TrainResult r = train(o);
  ASSERT_EQ(r.exit_code, kExitOk);
  ASSERT_EQ(r.losses.size(), 30u);
  auto mean = [&](size_t from) { return (r.losses[from] + r.losses[from + 1] + r.losses[from + 2]) / 3; };
  EXPECT_NEAR(mean(0), std::log(50304.0), 0.5);  // uniform over the padded vocabulary at the start
  EXPECT_LT(mean(27), mean(0) - 2.0) << "first " << mean(0) << " last " << mean(27);
  EXPECT_LT(r.last_val_loss, mean(0) - 2.0);
}

TEST(Trainer, InitFromValidatesTheConvertedModelBeforeStep1) {
  test::TempDir dir("initfrom");
  auto source = [](const SourceSpec& s) { return make_repeating_source(128, 23, 5, s); };
  TrainerOptions first = options(dir, {"train.steps=10", "checkpoint.dir=" + dir / "pre"});
  first.make_source = source;
  ASSERT_EQ(train(first).exit_code, kExitOk);

  TrainerOptions up = options(dir, {"train.steps=10", "train.init_from=" + dir / "pre", "log.dir=" + dir / "up"});
  up.make_source = source;
  const TrainResult r = train(up);
  ASSERT_EQ(r.exit_code, kExitOk);
  std::ifstream in(dir / "up/metrics.jsonl");
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  const auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["step"], 0);
  ASSERT_TRUE(j.contains("val_loss"));
  // It validates the weights it starts from: the pre-training run's final validation, same data.
  EXPECT_EQ(j["val_loss"].get<double>(), load_checkpoint(dir / "pre").state.last_val_loss);
}

TEST(Trainer, ResumeIsBitExact) {
  test::TempDir a("straight"), b("resumed");
  test::make_tiny_data(a);
  test::make_tiny_data(b);
  const TrainResult straight = train(options(a));
  ASSERT_EQ(straight.exit_code, kExitOk);
  ASSERT_EQ(straight.losses.size(), 30u);

  // k = 12 is neither a checkpoint nor an eval step: the stop writes its own checkpoint.
  TrainerOptions first = options(b);
  first.stop_after_step = 12;
  const TrainResult part1 = train(first);
  ASSERT_EQ(part1.exit_code, kExitPreempted);
  ASSERT_EQ(part1.step, 12);
  TrainerOptions second = options(b);
  second.resume = "auto";
  const TrainResult part2 = train(second);
  ASSERT_EQ(part2.exit_code, kExitOk);

  std::vector<double> joined = part1.losses;
  joined.insert(joined.end(), part2.losses.begin(), part2.losses.end());
  EXPECT_TRUE(bitwise_equal(joined, straight.losses));
  EXPECT_TRUE(bitwise_equal(part2.final_master, straight.final_master));
  EXPECT_EQ(part2.last_val_loss, straight.last_val_loss);
  // The final checkpoints agree too, moments included.
  const CheckpointData ca = load_checkpoint(a / "ckpt"), cb = load_checkpoint(b / "ckpt");
  EXPECT_TRUE(bitwise_equal(ca.m, cb.m));
  EXPECT_TRUE(bitwise_equal(ca.v, cb.v));
  EXPECT_EQ(ca.state.sampler, cb.state.sampler);
  EXPECT_EQ(ca.state.adam_t, cb.state.adam_t);
  EXPECT_EQ(ca.state.tokens_seen, cb.state.tokens_seen);

  // Resuming a finished run does nothing; --resume with an explicit path works as auto does.
  TrainerOptions again = options(b);
  again.resume = b / "ckpt/step-00000030";
  const TrainResult noop = train(again);
  EXPECT_EQ(noop.exit_code, kExitOk);
  EXPECT_TRUE(noop.losses.empty());
}

// Raises a real signal when the n-th batch is fetched, i.e. in the middle of that step.
class SignalAtBatch final : public TokenSource {
 public:
  SignalAtBatch(std::unique_ptr<TokenSource> inner, int at, int signo) : inner_(std::move(inner)), at_(at), signo_(signo) {}
  void next(std::vector<int32_t>& rows) override {
    inner_->next(rows);
    if (++calls_ == at_) ::raise(signo_);
  }
  data::SamplerState state() const override { return inner_->state(); }
  void restore(const data::SamplerState& s) override { inner_->restore(s); }

 private:
  std::unique_ptr<TokenSource> inner_;
  int at_, calls_ = 0, signo_;
};

TEST(Trainer, StopSignalFinishesTheStepCheckpointsAndResumesExactly) {
  test::TempDir a("sigref"), b("sig");
  auto source = [](const SourceSpec& s) { return make_repeating_source(128, 29, 3, s); };
  TrainerOptions ref = options(a, {"train.steps=20", "train.eval_interval=0"});
  ref.make_source = source;
  const TrainResult straight = train(ref);

  for (int signo : {SIGUSR1, SIGTERM}) {
    signals::clear();
    fs::remove_all(b / "ckpt");
    TrainerOptions o = options(b, {"train.steps=20", "train.eval_interval=0"});
    o.make_source = [&](const SourceSpec& s) -> std::unique_ptr<TokenSource> {
      if (s.validation) return nullptr;
      return std::make_unique<SignalAtBatch>(source(s), 7, signo);
    };
    const TrainResult stopped = train(o);
    signals::clear();
    EXPECT_EQ(stopped.exit_code, kExitPreempted);
    EXPECT_EQ(stopped.step, 7) << "the step in flight is finished, no further one is started";
    EXPECT_EQ(*find_latest(b / "ckpt"), b / "ckpt/step-00000007");

    TrainerOptions resume = options(b, {"train.steps=20", "train.eval_interval=0"});
    resume.make_source = source;
    resume.resume = "auto";
    const TrainResult rest = train(resume);
    ASSERT_EQ(rest.exit_code, kExitOk);
    std::vector<double> joined = stopped.losses;
    joined.insert(joined.end(), rest.losses.begin(), rest.losses.end());
    EXPECT_TRUE(bitwise_equal(joined, straight.losses)) << signals::name(signo);
    EXPECT_TRUE(bitwise_equal(rest.final_master, straight.final_master)) << signals::name(signo);
  }
}

TEST(Trainer, NonFiniteStepsAreSkippedAndKInARowStopTheRun) {
  test::TempDir dir("bad");
  // A "converted" model whose weights hold a NaN: every loss is NaN.
  TrainerOptions o = options(dir, {"train.max_bad_steps=3", "checkpoint.interval=0"});
  CheckpointData poisoned;
  poisoned.config = o.config;
  const ParamLayout layout(o.config.spec());
  poisoned.master.assign(static_cast<size_t>(layout.total()), 0.0f);
  for (const ParamView& v : layout.views()) std::fill_n(poisoned.master.begin() + v.offset, v.numel, 0.01f);
  poisoned.master[layout.at("final_ln.weight").offset] = std::numeric_limits<float>::quiet_NaN();
  save_checkpoint(dir / "poisoned", poisoned, 1);

  o = options(dir, {"train.max_bad_steps=3", "checkpoint.interval=0", "train.init_from=" + dir / "poisoned"});
  o.make_source = [](const SourceSpec& s) { return make_repeating_source(128, 23, 5, s); };
  const TrainResult r = train(o);
  EXPECT_EQ(r.exit_code, kExitBadSteps);
  EXPECT_EQ(r.step, 3);
  ASSERT_EQ(r.losses.size(), 3u);
  for (double l : r.losses) EXPECT_TRUE(std::isnan(l));
  const CheckpointData c = load_checkpoint(dir / "ckpt");
  EXPECT_EQ(c.state.step, 3);
  EXPECT_EQ(c.state.consecutive_bad, 3);
  EXPECT_EQ(c.state.adam_t, 0) << "no update was made";
  EXPECT_TRUE(bitwise_equal(c.master, poisoned.master)) << "skipped steps must not touch the weights";
}

TEST(Trainer, MetricsJsonlAndTensorBoardAgreeWithTheRun) {
  test::TempDir dir("metrics");
  TrainerOptions o = options(dir);
  o.make_source = [](const SourceSpec& s) { return make_repeating_source(128, 23, 5, s); };
  const TrainResult r = train(o);
  ASSERT_EQ(r.exit_code, kExitOk);

  std::map<int64_t, double> loss, val;
  std::ifstream in(dir / "log/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) {
      loss[j["step"]] = j["loss"];
      for (const char* k : {"lr", "grad_norm", "tokens_per_s", "mfu", "peak", "mem_bytes", "eta_s", "total_steps"})
        EXPECT_TRUE(j.contains(k)) << k;
      // The logged loss is the mean over the interval's steps.
      const int64_t s = j["step"];
      double sum = 0;
      for (int64_t i = s - 5; i < s; ++i) sum += r.losses[i];
      EXPECT_NEAR(j["loss"].get<double>(), sum / 5, 1e-12);
    }
    if (j.contains("val_loss")) val[j["step"]] = j["val_loss"];
  }
  EXPECT_EQ(loss.size(), 6u);  // every 5 steps of 30
  ASSERT_EQ(val.size(), 3u);   // steps 10, 20 and the final 30
  EXPECT_EQ(val.at(30), r.last_val_loss);

  std::string events_path;
  for (const auto& e : fs::directory_iterator(dir / "log"))
    if (e.path().filename().string().find("tfevents") != std::string::npos) events_path = e.path().string();
  size_t matched = 0;
  for (const auto& ev : tensorboard::read_events(events_path))
    for (const auto& [tag, value] : ev.scalars) {
      if (tag == "train/loss") {
        EXPECT_EQ(value, static_cast<float>(loss.at(ev.step)));
        ++matched;
      }
      if (tag == "val/loss") {
        EXPECT_EQ(value, static_cast<float>(val.at(ev.step)));
        ++matched;
      }
    }
  EXPECT_EQ(matched, loss.size() + val.size());

  // A resume drops the records of steps it re-does (here: everything after step 30 — none) and a
  // fresh start at step 0 in the same log dir starts the file over.
  TrainerOptions fresh = options(dir, {"train.steps=5", "checkpoint.dir=" + dir / "ckpt2"});
  fresh.make_source = o.make_source;
  train(fresh);
  std::ifstream again(dir / "log/metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(again, line);) ++lines;
  EXPECT_EQ(lines, 2);  // step 5 and its final validation
}

}  // namespace
}  // namespace mlkv
