// The executables end to end: SIGKILL at random moments (inside checkpoint writes too) with
// `--resume auto` after each kill reproduces the uninterrupted run bit for bit; SIGTERM/SIGUSR1
// (twice, the second during the write) give exit 3 and an exact resume; bad inputs exit 2 with
// the reason and leave existing checkpoints untouched; mlkv-eval reproduces the trainer's last
// validation loss and dumps logits; scripts/plot.py writes a valid PNG.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/checkpoint.h"
#include "core/errors.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "../hf/python_env.h"
#include "trainer_test_util.h"

namespace mlkv {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// Every file of every step directory, with its CRC: "nothing lost" means this does not change.
std::map<std::string, uint32_t> snapshot(const std::string& dir) {
  std::map<std::string, uint32_t> files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) files[e.path().string()] = crc32_file(e.path().string());
  return files;
}

double last_val_loss(const std::string& metrics) {
  double v = NAN;
  for (const auto& j : test::metrics_rows(metrics))
    if (j.contains("val_loss")) v = j["val_loss"].get<double>();
  return v;
}

// One uninterrupted run of the tiny config, shared by the tests of one process.
class Executables : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ref_ = new TempDir("ref");
    test::make_tiny_data(*ref_);
    std::string out;
    ref_code_ = test::run({test::bin("mlkv-train"), test::tiny_config(*ref_)}, out);
    ref_output_ = new std::string(out);
  }
  static void TearDownTestSuite() {
    delete ref_;
    delete ref_output_;
  }
  void SetUp() override { ASSERT_EQ(ref_code_, 0) << *ref_output_; }
  static std::vector<float> ref_master() { return load_checkpoint(*ref_ / "ckpt").master; }

  static TempDir* ref_;
  static int ref_code_;
  static std::string* ref_output_;
};
TempDir* Executables::ref_ = nullptr;
int Executables::ref_code_ = -1;
std::string* Executables::ref_output_ = nullptr;

TEST_F(Executables, ProgressLineCheckpointsAndSummary) {
  const std::string& out = *ref_output_;
  EXPECT_NE(out.find("[rank 0] step 30/30 | loss "), std::string::npos) << out;
  EXPECT_NE(out.find("tok/s | MFU "), std::string::npos) << out;
  EXPECT_NE(out.find("(peak 989 TFLOP/s fp32)"), std::string::npos) << out;
  EXPECT_NE(out.find("| ETA "), std::string::npos) << out;
  EXPECT_NE(out.find("[rank 0] done: 30 steps"), std::string::npos) << out;
  EXPECT_EQ(test::read_text(*ref_ / "ckpt/latest"), "step-00000030\n");
  EXPECT_TRUE(fs::exists(*ref_ / "ckpt/step-00000025"));  // keep_last = 2
  EXPECT_FALSE(fs::exists(*ref_ / "ckpt/step-00000020"));
}

TEST_F(Executables, CommandLineErrorsExit2WithUsage) {
  std::string out;
  EXPECT_EQ(test::run({test::bin("mlkv-train"), "--bogus"}, out), kExitBadInput);
  EXPECT_NE(out.find("usage: mlkv-train"), std::string::npos) << out;
  EXPECT_EQ(test::run({test::bin("mlkv-train")}, out), kExitBadInput);
  EXPECT_EQ(test::run({test::bin("mlkv-train"), "--help"}, out), 0);
  EXPECT_EQ(test::run({test::bin("mlkv-train"), *ref_ / "run.toml", "--set", "train.nope=1"}, out), kExitBadInput);
  EXPECT_NE(out.find("train.nope"), std::string::npos) << out;
  EXPECT_EQ(test::run({test::bin("mlkv-train"), "--print-config", *ref_ / "run.toml", "--set", "kv.kv_layers=2"}, out), 0);
  EXPECT_NE(out.find("kv_layers = 2"), std::string::npos) << out;
  EXPECT_EQ(test::run({test::bin("mlkv-train"), "--config-doc"}, out), 0);
  EXPECT_NE(out.find("checkpoint.keep_last"), std::string::npos);
  EXPECT_EQ(test::run({test::bin("mlkv-eval"), "--ckpt"}, out), kExitBadInput);
}

TEST_F(Executables, SigkillAtRandomMomentsThenResumeAutoMatchesTheUninterruptedRun) {
  TempDir dir("kill");
  test::make_tiny_data(dir);
  const std::string config = test::tiny_config(dir);
  Rng rng(20240601);
  int kills = 0, kills_in_write = 0, runs = 0, code = -1, stall = 0;
  int64_t last_step = -1;
  // Pauses of 20 ms between checkpoint files make each write last ~100 ms. Two runs in three are
  // killed 0–99 ms (+60 ms per kill that made no progress) after a checkpoint's temporary
  // directory appears, i.e. inside (or just after) a write; the third at a random moment, 10 ms to 200 ms + 60 ms per kill that made no progress
  // (so every stage is eventually passed). After 30 kills the last run is left to finish.
  const std::vector<std::string> env = {"MLKV_TEST_SLOW_CHECKPOINT_MS=20"};
  auto writing = [&] {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir / "ckpt", ec))
      if (e.path().filename().string().find(".tmp-") != std::string::npos) return true;
    return false;
  };
  while (code != 0 && runs < 200) {
    ++runs;
    test::Proc p = test::spawn({test::bin("mlkv-train"), config, "--resume", "auto"}, dir / "train.log", env);
    bool exited = false;
    if (kills < 30) {
      if (runs % 3 != 0) {
        while (!(exited = test::try_wait(p, code)) && !writing()) sleep_ms(1);
        // +60 ms per kill that made no progress: a write (~100 ms) that keeps being cut short
        // would otherwise stall the run at step 0, and the last run would start fresh.
        if (!exited) sleep_ms(static_cast<int>(rng.next_u64() % 100) + 60 * stall);
      } else {
        sleep_ms(10 + static_cast<int>(rng.next_u64() % static_cast<uint64_t>(190 + 60 * stall)));
      }
      if (!exited) ::kill(p.pid, SIGKILL);
    }
    if (!exited) code = test::wait_for(p);
    if (code == 128 + SIGKILL) {
      ++kills;
      kills_in_write += writing();
      // Whatever the kill interrupted, what --resume auto would take is complete and verifies.
      int64_t step = 0;
      if (auto latest = find_latest(dir / "ckpt")) {
        EXPECT_NO_THROW(step = load_checkpoint(*latest).state.step) << *latest;
      }
      stall = step == last_step ? stall + 1 : 0;
      last_step = step;
    } else {
      ASSERT_EQ(code, 0) << test::read_text(dir / "train.log");
    }
  }
  ASSERT_EQ(code, 0);
  EXPECT_GE(kills, 10);
  EXPECT_GE(kills_in_write, 5) << "kills should land inside checkpoint writes";
  const std::string log = test::read_text(dir / "train.log");
  EXPECT_GT(last_step, 0) << "no kill landed after a complete checkpoint";
  EXPECT_NE(log.find("resumed from"), std::string::npos);
  const CheckpointData got = load_checkpoint(dir / "ckpt"), want = load_checkpoint(*ref_ / "ckpt");
  EXPECT_EQ(got.state.step, 30);
  EXPECT_EQ(0, std::memcmp(got.master.data(), want.master.data(), want.master.size() * 4)) << "weights differ";
  EXPECT_EQ(0, std::memcmp(got.m.data(), want.m.data(), want.m.size() * 4)) << "Adam moments differ";
  EXPECT_EQ(got.state.last_val_loss, want.state.last_val_loss);
  // No temporary directories are left once a run has completed a checkpoint after the kills.
  for (const auto& e : fs::directory_iterator(dir / "ckpt"))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  std::cout << "[ info ] " << kills << " kills (" << kills_in_write << " inside a checkpoint write) in " << runs << " runs\n";
}

TEST_F(Executables, StopSignalsExit3AndTheResumeContinuesExactly) {
  for (int signo : {SIGTERM, SIGUSR1}) {
    TempDir dir("term");
    test::make_tiny_data(dir);
    const std::string config = test::tiny_config(dir);
    // Slow checkpoint writes (4 x 80 ms) keep the run going long enough to signal it mid-way, and
    // the second signal lands inside the stop's own checkpoint write.
    const test::Proc p = test::spawn({test::bin("mlkv-train"), config}, dir / "train.log", {"MLKV_TEST_SLOW_CHECKPOINT_MS=80"});
    sleep_ms(700);
    ::kill(p.pid, signo);
    sleep_ms(100);
    ::kill(p.pid, signo);
    const int code = test::wait_for(p);
    const std::string log = test::read_text(dir / "train.log");
    ASSERT_EQ(code, kExitPreempted) << log;
    EXPECT_NE(log.find(std::string("stop requested (") + (signo == SIGTERM ? "SIGTERM" : "SIGUSR1")), std::string::npos)
        << log;
    const auto latest = find_latest(dir / "ckpt");
    ASSERT_TRUE(latest.has_value());
    const CheckpointData stopped = load_checkpoint(*latest);
    EXPECT_GT(stopped.state.step, 0);
    EXPECT_LT(stopped.state.step, 30);

    std::string out;
    ASSERT_EQ(test::run({test::bin("mlkv-train"), config, "--resume", "auto"}, out), 0) << out;
    const CheckpointData got = load_checkpoint(dir / "ckpt");
    EXPECT_EQ(got.master, ref_master()) << "resume after " << (signo == SIGTERM ? "SIGTERM" : "SIGUSR1");
  }
}

TEST_F(Executables, BadInputsExit2WithTheReasonAndLoseNothing) {
  TempDir dir("badin");
  fs::copy(*ref_ / "ckpt", dir / "ckpt", fs::copy_options::recursive);
  const auto before = snapshot(dir / "ckpt");
  const std::string config = test::tiny_config(dir);  // its data paths do not exist: never reached
  std::string out;

  // A checkpoint of another KV plan.
  EXPECT_EQ(test::run({test::bin("mlkv-train"), config, "--set", "kv.kv_layers=2", "--resume", dir / "ckpt"}, out),
            kExitBadInput);
  EXPECT_NE(out.find("checkpoint of another model"), std::string::npos) << out;
  EXPECT_NE(out.find("KV plan"), std::string::npos) << out;
  // Another model shape.
  EXPECT_EQ(test::run({test::bin("mlkv-train"), config, "--set", "model.layers=3", "--resume", "auto"}, out),
            kExitBadInput);
  EXPECT_NE(out.find("model.layers 2 in the checkpoint, 3 in this run"), std::string::npos) << out;
  // Checkpoints of a foreign model as train.init_from too.
  EXPECT_EQ(test::run({test::bin("mlkv-train"), config, "--set", "kv.kv_heads=1", "--set",
                       "train.init_from=" + dir / "ckpt"}, out), kExitBadInput);
  EXPECT_NE(out.find("KV plan"), std::string::npos) << out;
  EXPECT_EQ(snapshot(dir / "ckpt"), before) << "a refused resume changed the checkpoints";

  // A truncated checkpoint, named explicitly.
  fs::copy(*ref_ / "ckpt/step-00000030", dir / "trunc", fs::copy_options::recursive);
  fs::resize_file(dir / "trunc/optim.safetensors", 1000);
  EXPECT_EQ(test::run({test::bin("mlkv-train"), config, "--resume", dir / "trunc"}, out), kExitBadInput);
  EXPECT_NE(out.find("truncated"), std::string::npos) << out;
  // A corrupt state.json.
  fs::copy(*ref_ / "ckpt/step-00000030", dir / "corrupt", fs::copy_options::recursive);
  std::ofstream(dir / "corrupt/state.json", std::ios::trunc) << "{ not json";
  EXPECT_EQ(test::run({test::bin("mlkv-train"), config, "--resume", dir / "corrupt"}, out), kExitBadInput);
  EXPECT_NE(out.find("corrupt manifest"), std::string::npos) << out;
  EXPECT_EQ(test::run({test::bin("mlkv-eval"), "--ckpt", dir / "corrupt", "--data", dir / "x"}, out), kExitBadInput);

  // An unwritable checkpoint directory: refused before any training. The data must exist here,
  // since every input is checked before any output directory is touched.
  test::make_tiny_data(dir);
  std::ofstream(dir / "a-file") << "x";
  EXPECT_EQ(test::run({test::bin("mlkv-train"), config, "--set", "checkpoint.dir=" + dir / "a-file/ckpt"}, out),
            kExitBadInput);
  EXPECT_NE(out.find("checkpoint.dir"), std::string::npos) << out;
  EXPECT_EQ(out.find("step 1/"), std::string::npos) << "training started: " << out;
  fs::remove_all(dir / "data");  // the checks below need the data paths missing again
  if (::geteuid() != 0) {  // a read-only directory holding checkpoints (permissions do not bind root)
    fs::permissions(dir / "ckpt", fs::perms::owner_read | fs::perms::owner_exec);
    EXPECT_EQ(test::run({test::bin("mlkv-train"), config, "--resume", "auto"}, out), kExitBadInput);
    EXPECT_NE(out.find("not writable"), std::string::npos) << out;
    fs::permissions(dir / "ckpt", fs::perms::owner_all);
  }
  EXPECT_EQ(snapshot(dir / "ckpt"), before) << "a failed start changed the checkpoints";

  // A launcher variable that is no number (a broken job script): exit 2 naming it and its value.
  EXPECT_EQ(test::run({test::bin("mlkv-train"), config}, out, {"OMPI_COMM_WORLD_RANK=first"}), kExitBadInput);
  EXPECT_NE(out.find("OMPI_COMM_WORLD_RANK='first'"), std::string::npos) << out;

  // Missing data is a clear error too (exit 2 naming the path), after the directory probes.
  EXPECT_EQ(test::run({test::bin("mlkv-train"), config}, out), kExitBadInput);
  EXPECT_NE(out.find(dir / "data/train"), std::string::npos) << out;
}

TEST_F(Executables, EvalReproducesTheTrainersLastValidationAndDumpsLogits) {
  const double trainer_val = last_val_loss(*ref_ / "log/metrics.jsonl");
  ASSERT_TRUE(std::isfinite(trainer_val));
  std::string out;
  ASSERT_EQ(test::run({test::bin("mlkv-eval"), "--ckpt", *ref_ / "ckpt", "--data", *ref_ / "data/val", "--json"}, out), 0)
      << out;
  const auto j = nlohmann::json::parse(out.substr(out.find('{')));
  EXPECT_EQ(j["loss"].get<double>(), trainer_val) << out;
  EXPECT_EQ(j["step"].get<int64_t>(), 30);
  EXPECT_NEAR(j["ppl"].get<double>(), std::exp(trainer_val), 1e-9);

  ASSERT_EQ(test::run({test::bin("mlkv-eval"), "--ckpt", *ref_ / "ckpt/step-00000030", "--dump-logits",
                       *ref_ / "logits.safetensors", "--tokens", "1,2,3,4,5"}, out), 0) << out;
  const safetensors::Reader r(*ref_ / "logits.safetensors");
  EXPECT_EQ(r.at("logits").shape, (std::vector<int64_t>{1, 5, 128}));
  EXPECT_EQ(r.read_i32("tokens"), (std::vector<int32_t>{1, 2, 3, 4, 5}));
  const std::vector<float> logits = r.read_f32("logits");

  ASSERT_EQ(test::run({test::bin("mlkv-eval"), "--ckpt", *ref_ / "ckpt", "--dump-logits", *ref_ / "logits.npy",
                       "--tokens", "1,2,3,4,5"}, out), 0) << out;
  const std::string npy = test::read_text(*ref_ / "logits.npy");
  ASSERT_EQ(npy.substr(0, 6), "\x93NUMPY");
  const size_t header = 10 + static_cast<uint8_t>(npy[8]) + 256 * static_cast<uint8_t>(npy[9]);
  EXPECT_EQ(header % 64, 0u);
  EXPECT_NE(npy.find("'shape': (5, 128)"), std::string::npos);
  ASSERT_EQ(npy.size(), header + logits.size() * 4);
  EXPECT_EQ(0, std::memcmp(npy.data() + header, logits.data(), logits.size() * 4));

  EXPECT_EQ(test::run({test::bin("mlkv-eval"), "--ckpt", *ref_ / "ckpt", "--dump-logits", *ref_ / "l.npy", "--tokens",
                       "1,999"}, out), kExitBadInput);
  EXPECT_NE(out.find("999"), std::string::npos) << out;
}

// Data parallelism through parallel::Context: mpirun -np 2 with micro-batches of 4 equals one rank
// accumulating 2 micro-batches (same global batch, same rows) up to summation order, and a dp = 2
// checkpoint (moments by name) resumes on one rank.
TEST_F(Executables, TwoRanksMatchOneAndTheirCheckpointResumesOnOne) {
  const std::string mpirun = "/usr/bin/mpirun";
  if (!fs::exists(mpirun)) GTEST_SKIP() << "no mpirun";
  TempDir dir("dp2");
  std::string out;
  std::vector<std::string> cmd = {mpirun, "-np", "2", "--oversubscribe", "--mca", "btl", "self,vader", "--mca",
                                  "btl_vader_single_copy_mechanism", "none", "-x", "OMP_NUM_THREADS=1"};
  if (::geteuid() == 0) cmd.push_back("--allow-run-as-root");
  for (const std::string& a : {test::bin("mlkv-train"), *ref_ / "run.toml", std::string("--set"), std::string("train.grad_accum=1"),
                               std::string("--set"), "checkpoint.dir=" + dir / "ckpt", std::string("--set"), "log.dir=" + dir / "log"})
    cmd.push_back(a);
  ASSERT_EQ(test::run(cmd, out, {"OMPI_MCA_plm_rsh_agent="}), 0) << out;
  EXPECT_NE(out.find("dp 1/2"), std::string::npos) << out;
  const CheckpointData two = load_checkpoint(dir / "ckpt"), one = load_checkpoint(*ref_ / "ckpt");
  EXPECT_EQ(two.state.dp, 2);
  EXPECT_EQ(two.state.sampler, one.state.sampler) << "the same rows were consumed";
  EXPECT_NEAR(two.state.last_val_loss, one.state.last_val_loss, 1e-5 * one.state.last_val_loss);
  // Adam turns last-bit differences of near-zero gradients into steps of up to ~lr, so the weights
  // agree on average, not element by element.
  double sum_diff = 0;
  for (size_t i = 0; i < one.master.size(); ++i) sum_diff += std::fabs(double{two.master[i]} - one.master[i]);
  EXPECT_LT(sum_diff / static_cast<double>(one.master.size()), 1e-4);

  // The dp = 2 checkpoint of step 25, resumed by one rank accumulating two micro-batches.
  ASSERT_EQ(test::run({test::bin("mlkv-train"), *ref_ / "run.toml", "--resume", dir / "ckpt/step-00000025", "--set",
                       "checkpoint.dir=" + dir / "ckpt1", "--set", "log.dir=" + dir / "log1"}, out), 0) << out;
  EXPECT_NE(out.find("at step 25"), std::string::npos) << out;
  EXPECT_NEAR(load_checkpoint(dir / "ckpt1").state.last_val_loss, one.state.last_val_loss, 1e-5 * one.state.last_val_loss);
}

// scripts/plot.py loss (matplotlib, issue 16): the PNG's chunks and CRCs are right, it decodes to the
// requested size with something drawn, and bad input exits 2 naming what is wrong.
TEST_F(Executables, PlotScriptWritesAValidPngAndRefusesBadInput) {
  const std::string py = test::plot_python();
  MLKV_REQUIRE_PYTHON_WHY(test::python_lacks("matplotlib", py, "Debian: apt-get install python3-matplotlib, or set MLKV_PLOT_PYTHON"));
  // env finds python3 on PATH (spawn uses execv)
  auto plot = [&](std::vector<std::string> args, std::string& out) {
    args.insert(args.begin(), {"/usr/bin/env", py, std::string(MLKV_SOURCE_DIR) + "/scripts/plot.py", "loss"});
    return test::run(args, out);
  };
  std::string out;
  const std::string png_path = *ref_ / "loss.png";
  ASSERT_EQ(plot({png_path, *ref_ / "log", *ref_ / "log/metrics.jsonl", "--size", "640x400", "--chain", "--title", "t"}, out), 0) << out;
  EXPECT_NE(out.find("log: 6 loss points"), std::string::npos) << out;
  const std::string png = test::read_text(png_path);
  ASSERT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  auto be32 = [&](size_t at) {
    return uint32_t{static_cast<uint8_t>(png[at])} << 24 | uint32_t{static_cast<uint8_t>(png[at + 1])} << 16 |
           uint32_t{static_cast<uint8_t>(png[at + 2])} << 8 | uint32_t{static_cast<uint8_t>(png[at + 3])};
  };
  std::string types;
  for (size_t at = 8; at + 12 <= png.size();) {
    const uint32_t len = be32(at);
    const std::string type = png.substr(at + 4, 4);
    ASSERT_LE(at + 12 + len, png.size()) << type << " overruns the file";
    EXPECT_EQ(be32(at + 8 + len), crc32_update(0, png.data() + at + 4, len + 4)) << type;
    if (type == "IHDR") {
      EXPECT_EQ(std::to_string(be32(at + 8)) + "x" + std::to_string(be32(at + 12)), "640x400");
    }
    const bool more_idat = type == "IDAT" && types.size() >= 5 && types.substr(types.size() - 5) == "IDAT ";
    if (!more_idat) types += type + " ";  // consecutive IDATs count as one
    at += 12 + len;
  }
  EXPECT_EQ(types.substr(0, 5), "IHDR ");
  EXPECT_NE(types.find("IDAT "), std::string::npos) << types;
  EXPECT_EQ(types.substr(types.size() - 5), "IEND ") << types;
  // Decoded (Pillow under matplotlib inflates and checks the zlib stream): size, and not all white.
  ASSERT_EQ(test::run({"/usr/bin/env", py, "-c",
                       "import sys, matplotlib.image as m; a = m.imread(sys.argv[1]); "
                       "print('decoded', a.shape[1], a.shape[0], int((a[..., :3] < 0.9).any(axis=2).sum()))",
                       png_path}, out), 0) << out;
  int w = 0, h = 0, drawn = 0;
  ASSERT_EQ(std::sscanf(out.c_str(), "decoded %d %d %d", &w, &h, &drawn), 3) << out;
  EXPECT_EQ(w, 640);
  EXPECT_EQ(h, 400);
  EXPECT_GT(drawn, 1000);

  EXPECT_EQ(plot({png_path, *ref_ / "no-such-run"}, out), kExitBadInput);
  EXPECT_NE(out.find("no-such-run: cannot read"), std::string::npos) << out;
  EXPECT_EQ(plot({png_path, *ref_ / "run.toml"}, out), kExitBadInput);  // text, but no metrics records
  EXPECT_NE(out.find("run.toml: no loss or val_loss values"), std::string::npos) << out;
  EXPECT_EQ(plot({png_path, *ref_ / "log", "--size", "3x"}, out), kExitBadInput);
  EXPECT_NE(out.find("--size 3x"), std::string::npos) << out;
  EXPECT_EQ(plot({"--bogus"}, out), kExitBadInput);
  EXPECT_NE(out.find("usage: plot.py loss"), std::string::npos) << out;
}

}  // namespace
}  // namespace mlkv
