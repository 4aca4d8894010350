// Graceful stop on SIGTERM, SIGUSR1 (Slurm's --signal) and SIGINT: the handler only records the
// signal; the trainer polls stop_requested() between steps, finishes the current step, writes a
// checkpoint and exits with kExitPreempted (3). Further signals while that happens are recorded
// again and change nothing, and during a checkpoint write they are blocked outright
// (CriticalSection), so no system call of the write is interrupted.
#pragma once

namespace mlkv::signals {

// Installs the handlers and unblocks the stop signals in the calling thread (idempotent; main()
// calls it first thing, so a signal during start-up is recorded, not fatal). SA_RESTART keeps
// interrupted reads and writes going.
void install();
// The first stop signal received so far (0: none). Async-signal-safe to read.
int stop_requested();
const char* name(int signo);  // "SIGTERM", ...
// Test hook: behave as if `signo` had arrived.
void request_stop(int signo);
void clear();

// Blocks the stop signals in this thread for its lifetime; they are delivered (and recorded)
// when it ends. Wraps every checkpoint write.
class CriticalSection {
 public:
  CriticalSection();
  ~CriticalSection();
  CriticalSection(const CriticalSection&) = delete;
  CriticalSection& operator=(const CriticalSection&) = delete;

 private:
  alignas(16) unsigned char saved_[128];  // the previous sigset_t (opaque here to keep <signal.h> out)
};

}  // namespace mlkv::signals
