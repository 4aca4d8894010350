// Logging: every line says which rank wrote it ("[rank 0] ..."), so interleaved output of an
// mpirun job stays readable. Lines go to stderr (errors, warnings) or stdout (info), one write
// per line so that ranks sharing a terminal do not tear each other's lines.
#pragma once
#include <sstream>
#include <string>

namespace mlkv::log {

enum class Level { debug, info, warn, error };

// Set once at start-up (after the parallel context knows the rank). Defaults to 0.
void set_rank(int rank);
int rank();
// Lines below `level` are dropped (MLKV_LOG_LEVEL=debug|info|warn|error overrides at start-up).
void set_level(Level level);

void write(Level level, const std::string& message);
inline void debug(const std::string& m) { write(Level::debug, m); }
inline void info(const std::string& m) { write(Level::info, m); }
inline void warn(const std::string& m) { write(Level::warn, m); }
inline void error(const std::string& m) { write(Level::error, m); }

// Builds a message from streamable parts: log::info(log::cat("step ", s, " done")).
template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream o;
  (o << ... << parts);
  return o.str();
}

}  // namespace mlkv::log
