// Stop-signal handling (see signals.h).
#include "core/signals.h"

#include <pthread.h>
#include <signal.h>

#include <cstring>

namespace mlkv::signals {
namespace {

volatile sig_atomic_t g_stop_signal = 0;
constexpr int kStopSignals[] = {SIGTERM, SIGUSR1, SIGINT};

void on_signal(int signo) {
  if (g_stop_signal == 0) g_stop_signal = signo;  // the first one names the reason
}

sigset_t stop_set() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : kStopSignals) sigaddset(&set, s);
  return set;
}

static_assert(sizeof(sigset_t) <= 128, "CriticalSection::saved_ is too small for sigset_t");

}  // namespace

void install() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  for (int s : kStopSignals) sigaction(s, &sa, nullptr);
  // A launcher may start us with these blocked (the mask survives exec): one that arrived before
  // now is pending, and is delivered to the handler here instead of being held forever.
  const sigset_t set = stop_set();
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

int stop_requested() { return g_stop_signal; }
void request_stop(int signo) { g_stop_signal = signo; }
void clear() { g_stop_signal = 0; }

const char* name(int signo) {
  switch (signo) {
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    case SIGINT: return "SIGINT";
    default: return "signal";
  }
}

CriticalSection::CriticalSection() {
  const sigset_t set = stop_set();
  pthread_sigmask(SIG_BLOCK, &set, reinterpret_cast<sigset_t*>(saved_));
}

CriticalSection::~CriticalSection() { pthread_sigmask(SIG_SETMASK, reinterpret_cast<const sigset_t*>(saved_), nullptr); }

}  // namespace mlkv::signals
