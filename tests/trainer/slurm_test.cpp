// launch/slurm/train.sbatch without a cluster: shell stand-ins for `srun` (drops its options and
// execs the task) and `scontrol` (records its arguments) come first on PATH. The batch shell gets
// SIGUSR1 as Slurm's `--signal=B:USR1@120` sends it; the script must pass it to the task, which
// checkpoints and exits 3, then requeue the job and exit 0. The requeued start (the script again)
// resumes with `--resume auto` and must end where an uninterrupted run ends, bit for bit.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <thread>

#include "core/checkpoint.h"
#include "trainer_test_util.h"

namespace mlkv {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

void write_script(const std::string& path, const std::string& body) {
  std::ofstream(path) << "#!/bin/sh\n" << body;
  ::chmod(path.c_str(), 0755);
}

TEST(SlurmScript, Usr1CheckpointsRequeuesAndTheRestartResumesExactly) {
  TempDir ref("slurm-ref"), dir("slurm");
  test::make_tiny_data(ref);
  test::make_tiny_data(dir);
  std::string out;
  ASSERT_EQ(test::run({test::bin("mlkv-train"), test::tiny_config(ref)}, out), 0) << out;

  const std::string shims = dir / "shims";
  fs::create_directories(shims);
  write_script(shims + "/srun", "while [ \"${1#-}\" != \"$1\" ]; do shift; done\nexec \"$@\"\n");
  write_script(shims + "/scontrol", "echo \"$@\" >> \"" + dir / "scontrol.log" + "\"\n");
  const std::string config = test::tiny_config(dir);
  const std::string script = std::string(MLKV_SOURCE_DIR) + "/launch/slurm/train.sbatch";
  const std::vector<std::string> env = {"PATH=" + shims + ":" + std::getenv("PATH"), "MLKV_TRAIN=" + test::bin("mlkv-train"),
                                        "SLURM_JOB_ID=4242", "SLURM_SUBMIT_DIR=" + dir.path(),
                                        "MLKV_TEST_SLOW_CHECKPOINT_MS=80"};

  // First start: signalled mid-run, once the task has logged a step (so its handlers are in place).
  const test::Proc first = test::spawn({"/bin/bash", script, config}, dir / "job.out", env);
  for (int i = 0; i < 400 && test::read_text(dir / "job.out").find("] step 5/30") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  ::kill(first.pid, SIGUSR1);
  const int code = test::wait_for(first);
  const std::string log = test::read_text(dir / "job.out");
  ASSERT_EQ(code, 0) << "the script requeues and exits 0 after a preemption\n" << log;
  EXPECT_NE(log.find("stop requested (SIGUSR1)"), std::string::npos) << log;
  EXPECT_NE(log.find("mlkv-train exited with 3"), std::string::npos) << log;
  EXPECT_EQ(test::read_text(dir / "scontrol.log"), "requeue 4242\n");
  const auto stopped = find_latest(dir / "ckpt");
  ASSERT_TRUE(stopped.has_value()) << log;
  const int64_t stop_step = load_checkpoint(*stopped).state.step;
  EXPECT_GT(stop_step, 0);
  EXPECT_LT(stop_step, 30);

  // The requeued start: resumes and finishes; no second requeue.
  auto restart_env = env;
  restart_env.push_back("SLURM_RESTART_COUNT=1");
  const test::Proc second = test::spawn({"/bin/bash", script, config}, dir / "job.out", restart_env);
  ASSERT_EQ(test::wait_for(second), 0) << test::read_text(dir / "job.out");
  EXPECT_EQ(test::read_text(dir / "scontrol.log"), "requeue 4242\n");
  EXPECT_NE(test::read_text(dir / "job.out").find("resumed from"), std::string::npos);
  EXPECT_EQ(load_checkpoint(dir / "ckpt").master, load_checkpoint(ref / "ckpt").master)
      << "stopped at step " << stop_step << ", resumed: the weights must equal the uninterrupted run's";
}

}  // namespace
}  // namespace mlkv
