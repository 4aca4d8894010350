// Rank-tagged log lines (see logging.h).
#include "core/logging.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace mlkv::log {
namespace {

std::atomic<int> g_rank{0};

Level level_from_env() {
  const char* s = std::getenv("MLKV_LOG_LEVEL");
  if (!s) return Level::info;
  if (!std::strcmp(s, "debug")) return Level::debug;
  if (!std::strcmp(s, "warn")) return Level::warn;
  if (!std::strcmp(s, "error")) return Level::error;
  return Level::info;
}

std::atomic<Level> g_level{level_from_env()};

}  // namespace

void set_rank(int r) { g_rank = r; }
int rank() { return g_rank; }
void set_level(Level l) { g_level = l; }

void write(Level level, const std::string& message) {
  if (level < g_level.load()) return;
  std::string line = "[rank " + std::to_string(g_rank.load()) + "] ";
  if (level == Level::warn) line += "warning: ";
  if (level == Level::error) line += "error: ";
  line += message;
  if (line.empty() || line.back() != '\n') line += '\n';
  // One write(2) per line: atomic enough for a terminal or pipe shared by several ranks.
  const int fd = level >= Level::warn ? STDERR_FILENO : STDOUT_FILENO;
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n <= 0) break;
    p += n;
    left -= static_cast<size_t>(n);
  }
}

}  // namespace mlkv::log
