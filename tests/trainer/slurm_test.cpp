// launch/slurm/train.sbatch without a cluster (tests/slurm/ runs it under a real Slurm): shell
// stand-ins for `srun` (drops its options and execs the task) and `scontrol` (answers `show job`
// with the Command= a real job record has, records `requeue`) come first on PATH. The batch shell
// gets SIGUSR1 as Slurm's `--signal=B:USR1@120` sends it; the script must pass it to the task,
// which checkpoints and exits 3, then requeue the job and exit 0. The requeued start (the script
// again) resumes with `--resume auto` and must end where an uninterrupted run ends, bit for bit.
// Also: a refused requeue ends the job non-zero with the steps remaining; a signal before the task
// started is not lost; the binary is found next to the submitted script, the config relative to
// the submit directory, and either missing gives exit 2 with a message before anything runs.
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

bool wait_for_text(const std::string& file, const std::string& text, int max_ms = 20000) {
  for (int waited = 0; waited < max_ms; waited += 25) {
    if (fs::exists(file) && test::read_text(file).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  return false;
}

const std::string kScript = std::string(MLKV_SOURCE_DIR) + "/launch/slurm/train.sbatch";

// A job directory: tiny data and config, the stand-ins, and the environment of a batch shell.
struct Job {
  explicit Job(const std::string& tag, const std::string& scontrol_requeue = "") : dir(tag) {
    test::make_tiny_data(dir);
    config = test::tiny_config(dir);
    shims = dir / "shims";
    fs::create_directories(shims);
    write_script(shims + "/srun", "echo \"$@\" >> \"" + dir / "srun.log" + "\"\n"
                                  "while [ \"${1#-}\" != \"$1\" ]; do shift; done\nexec \"$@\"\n");
    // `show job` is how the script finds the path it was submitted as: a slow answer (a busy
    // controller) is the window in which a signal reaches the script before srun runs.
    write_script(shims + "/scontrol",
                 "case $1 in\n"
                 "  show) touch \"" + dir / "show-job" + "\"; sleep \"${SCONTROL_SHOW_DELAY:-0}\"\n"
                 "        [ -n \"${JOB_COMMAND:-}\" ] && echo \"   Command=$JOB_COMMAND\"; exit 0 ;;\n"
                 "  requeue) echo \"$@\" >> \"" + dir / "scontrol.log" + "\"\n" +
                     (scontrol_requeue.empty() ? "" : "        echo '" + scontrol_requeue + "' >&2; exit 1\n") +
                 "        exit 0 ;;\n"
                 "esac\n");
    env = {"PATH=" + shims + ":" + std::getenv("PATH"), "MLKV_BIN=" + test::bin("mlkv-train"), "SLURM_JOB_ID=4242",
           "SLURM_SUBMIT_DIR=" + dir.path(), "MLKV_TEST_SLOW_CHECKPOINT_MS=80"};
  }
  test::Proc start(const std::string& script, const std::vector<std::string>& args, std::vector<std::string> more = {}) {
    more.insert(more.begin(), env.begin(), env.end());
    std::vector<std::string> argv = {"/bin/bash", script};
    argv.insert(argv.end(), args.begin(), args.end());
    return test::spawn(argv, dir / "job.out", more);
  }
  std::string log() const { return test::read_text(dir / "job.out"); }

  TempDir dir;
  std::string config, shims;
  std::vector<std::string> env;
};

// A repository as a user has it: the script under launch/slurm/, the binary under build/bin/.
std::string make_repo(const TempDir& repo) {
  fs::create_directories(repo / "launch/slurm");
  fs::create_directories(repo / "build/bin");
  fs::copy_file(kScript, repo / "launch/slurm/train.sbatch");
  fs::create_symlink(test::bin("mlkv-train"), repo / "build/bin/mlkv-train");
  return repo / "launch/slurm/train.sbatch";
}

// One uninterrupted run of the tiny config, for the bitwise comparisons.
std::vector<float> reference_master() {
  static const std::vector<float> master = [] {
    TempDir ref("slurm-ref");
    test::make_tiny_data(ref);
    std::string out;
    EXPECT_EQ(test::run({test::bin("mlkv-train"), test::tiny_config(ref)}, out), 0) << out;
    return load_checkpoint(ref / "ckpt").master;
  }();
  return master;
}

TEST(SlurmScript, Usr1CheckpointsRequeuesAndTheRestartResumesExactly) {
  Job job("slurm");
  // First start: signalled mid-run, once the task has logged a step (so its handlers are in place).
  const test::Proc first = job.start(kScript, {job.config});
  ASSERT_TRUE(wait_for_text(job.dir / "job.out", "] step 5/30")) << job.log();
  ::kill(first.pid, SIGUSR1);
  ASSERT_EQ(test::wait_for(first), 0) << "the script requeues and exits 0 after a preemption\n" << job.log();
  const std::string log = job.log();
  EXPECT_NE(log.find("stop requested (SIGUSR1)"), std::string::npos) << log;
  EXPECT_NE(log.find("mlkv-train exited with 3"), std::string::npos) << log;
  EXPECT_EQ(test::read_text(job.dir / "scontrol.log"), "requeue 4242\n");
  const auto stopped = find_latest(job.dir / "ckpt");
  ASSERT_TRUE(stopped.has_value()) << log;
  const int64_t stop_step = load_checkpoint(*stopped).state.step;
  EXPECT_GT(stop_step, 0);
  EXPECT_LT(stop_step, 30);
  EXPECT_NE(log.find("requeueing job 4242: it resumes from the checkpoint (step " + std::to_string(stop_step) + " of 30"),
            std::string::npos) << log;

  // The requeued start: resumes and finishes; no second requeue.
  const test::Proc second = job.start(kScript, {job.config}, {"SLURM_RESTART_COUNT=1"});
  ASSERT_EQ(test::wait_for(second), 0) << job.log();
  EXPECT_EQ(test::read_text(job.dir / "scontrol.log"), "requeue 4242\n");
  EXPECT_NE(job.log().find("resumed from"), std::string::npos);
  EXPECT_EQ(load_checkpoint(job.dir / "ckpt").master, reference_master())
      << "stopped at step " << stop_step << ", resumed: the weights must equal the uninterrupted run's";
}

// sbatch --no-requeue: `scontrol requeue` answers "presently disabled". Before: the job ended
// COMPLETED 0:0 with the remaining steps never run.
TEST(SlurmScript, ARefusedRequeueEndsTheJobNonZeroAndSaysWhy) {
  Job job("slurm-norequeue", "scontrol: error: Requested operation is presently disabled for job 4242");
  const test::Proc p = job.start(kScript, {job.config});
  ASSERT_TRUE(wait_for_text(job.dir / "job.out", "] step 5/30")) << job.log();
  ::kill(p.pid, SIGUSR1);
  const int code = test::wait_for(p);
  const std::string log = job.log();
  EXPECT_EQ(code, 3) << log;
  EXPECT_EQ(test::read_text(job.dir / "scontrol.log"), "requeue 4242\n");
  const auto stopped = find_latest(job.dir / "ckpt");
  ASSERT_TRUE(stopped.has_value()) << log;
  const int64_t step = load_checkpoint(*stopped).state.step;
  EXPECT_NE(log.find("stopped at step " + std::to_string(step) + " of 30 (" + std::to_string(30 - step) +
                     " steps remaining), but Slurm refused to requeue job 4242: scontrol: error: Requested "
                     "operation is presently disabled"),
            std::string::npos) << log;
}

// Slurm's signal can come while the script is still looking for its binary (here: a slow
// `scontrol show job`). Before: the trap found no task, dropped the signal, and the job trained on
// past its time limit. Now nothing starts, and the job is requeued at once.
TEST(SlurmScript, ASignalBeforeTheTaskStartsIsNotDropped) {
  Job job("slurm-early");
  TempDir repo("slurm-early-repo");
  auto env = std::vector<std::string>{"SCONTROL_SHOW_DELAY=1", "JOB_COMMAND=" + make_repo(repo), "MLKV_BIN="};
  const test::Proc p = job.start(kScript, {job.config}, env);
  ASSERT_TRUE(wait_for_text(job.dir / "show-job", "", 10000)) << job.log();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // inside the slow `show job`
  ::kill(p.pid, SIGUSR1);
  EXPECT_EQ(test::wait_for(p), 0) << job.log();
  EXPECT_NE(job.log().find("SIGUSR1 arrived before the task started"), std::string::npos) << job.log();
  EXPECT_EQ(test::read_text(job.dir / "scontrol.log"), "requeue 4242\n") << job.log();
  EXPECT_FALSE(fs::exists(job.dir / "srun.log")) << "no task should start once the job is to stop";
}

// As Slurm runs it: a copy of the script in a spool directory, the submitted path only in the job
// record, the config relative to the submit directory. Before: `<SUBMIT_DIR>/build/bin/mlkv-train:
// No such file` after allocation.
TEST(SlurmScript, FindsTheBinaryNextToTheSubmittedScriptAndTheConfigInTheSubmitDir) {
  Job job("slurm-find");
  TempDir repo("slurm-repo");
  const std::string submitted = make_repo(repo);
  fs::create_directories(job.dir / "spool");
  fs::copy_file(kScript, job.dir / "spool/slurm_script");
  std::vector<std::string> env = {"JOB_COMMAND=" + submitted, "MLKV_BIN="};
  const test::Proc p = job.start(job.dir / "spool/slurm_script", {"run.toml", "--set", "train.steps=6"}, env);
  EXPECT_EQ(test::wait_for(p), 0) << job.log();
  EXPECT_NE(job.log().find("| " + repo / "build/bin/mlkv-train"), std::string::npos) << job.log();
  EXPECT_EQ(test::read_text(job.dir / "ckpt/latest"), "step-00000006\n") << job.log();
}

TEST(SlurmScript, AMissingBinaryOrConfigStopsBeforeAnythingRuns) {
  Job job("slurm-missing");
  fs::create_directories(job.dir / "spool");
  fs::copy_file(kScript, job.dir / "spool/slurm_script");
  // No MLKV_BIN, no build next to the (copied) script or in the submit dir, none on PATH.
  const std::vector<std::string> no_bin = {"MLKV_BIN=", "PATH=" + job.shims + ":/usr/bin:/bin"};
  test::Proc p = job.start(job.dir / "spool/slurm_script", {job.config}, no_bin);
  EXPECT_EQ(test::wait_for(p), 2) << job.log();
  EXPECT_NE(job.log().find("cannot find mlkv-train (looked at"), std::string::npos) << job.log();
  EXPECT_NE(job.log().find("set MLKV_BIN=/path/to/mlkv-train"), std::string::npos) << job.log();

  p = job.start(kScript, {"no-such.toml"});
  EXPECT_EQ(test::wait_for(p), 2) << job.log();
  EXPECT_NE(job.log().find("config " + job.dir / "no-such.toml" + " is not a readable file"), std::string::npos)
      << job.log();

  p = job.start(kScript, {job.config, "--set", "train.stepz=3"});
  EXPECT_EQ(test::wait_for(p), 2) << job.log();
  EXPECT_NE(job.log().find("rejects CONFIG or ARGS"), std::string::npos) << job.log();
  EXPECT_FALSE(fs::exists(job.dir / "srun.log")) << "nothing may be launched after a failed check";
}

}  // namespace
}  // namespace mlkv
