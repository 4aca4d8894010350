// A stop signal that arrives while mlkv-train is still starting (before its trainer runs) is a stop
// request like any other: the first step is finished, checkpointed, exit 3. The test makes "before
// the handlers" exact: the signal is sent while the new process still has it blocked (the mask a
// launcher passes through exec), so it is pending from the very first instruction. Before the fix,
// the handlers came late and never unblocked it: the run went on to the end, the signal dropped,
// and an unblocked SIGTERM in that window ended the process with 143 and no word.
#include <gtest/gtest.h>
#include <signal.h>

#include "core/checkpoint.h"
#include "trainer_test_util.h"

namespace mlkv {
namespace {

// Starts `args` with `signo` blocked from birth and sends it at once.
test::Proc spawn_with_pending(int signo, const std::vector<std::string>& args, const std::string& log) {
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, signo);
  pthread_sigmask(SIG_BLOCK, &block, &old);  // the child inherits the mask at fork
  test::Proc p = test::spawn(args, log);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  ::kill(p.pid, signo);  // pending in the child, whatever it is doing yet (still blocked)
  return p;
}

TEST(StartupSignal, AStopSignalBeforeTheHandlersIsHonouredAfterTheFirstStep) {
  for (int signo : {SIGTERM, SIGUSR1}) {
    test::TempDir dir("startup-signal");
    test::make_tiny_data(dir);
    const test::Proc p = spawn_with_pending(signo, {test::bin("mlkv-train"), test::tiny_config(dir)}, dir / "out.log");
    const int code = test::wait_for(p);
    const std::string out = test::read_text(dir / "out.log");
    EXPECT_EQ(code, 3) << strsignal(signo) << "\n" << out;
    EXPECT_NE(out.find(std::string("stop requested (") + (signo == SIGTERM ? "SIGTERM" : "SIGUSR1") +
                       "): checkpointing at step 1 and exiting with code 3"),
              std::string::npos) << out;
    ASSERT_TRUE(find_latest(dir / "ckpt").has_value()) << out;
    EXPECT_EQ(load_checkpoint(dir / "ckpt").state.step, 1);
  }
}

}  // namespace
}  // namespace mlkv
