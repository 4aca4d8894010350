// Typed errors. Every error carries where it came from (file, key, offset) so that
// the message a user sees names the thing to fix. launch/ turns them into exit codes.
#pragma once
#include <stdexcept>
#include <string>

namespace mlkv {

// Exit codes of every mlkv-* executable (documented in README.md).
enum ExitCode : int {
  kExitOk = 0,
  kExitFailure = 1,      // runtime failure (I/O, CUDA, communication)
  kExitBadInput = 2,     // bad config, command line, data or checkpoint
  kExitPreempted = 3,    // stopped by SIGTERM/SIGUSR1 after writing a checkpoint
  kExitBadSteps = 4,     // too many non-finite steps in a row (checkpoint written)
  kExitCommTimeout = 5,  // a collective unfinished after parallel.comm_timeout_s: a rank died or hangs
};

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, int exit_code = kExitFailure)
      : std::runtime_error(what), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

// Bad user input: config files, --set overrides, command lines.
class ConfigError : public Error {
 public:
  explicit ConfigError(const std::string& what) : Error(what, kExitBadInput) {}
};

// Bad or unreadable data (token shards, importers' inputs). `where` names file and offset.
class DataError : public Error {
 public:
  explicit DataError(const std::string& what) : Error(what, kExitBadInput) {}
};

// Bad, foreign or truncated checkpoints and weight files (safetensors, HF dirs).
class CheckpointError : public Error {
 public:
  explicit CheckpointError(const std::string& what) : Error(what, kExitBadInput) {}
};

// Operating-system level failures (open/write/rename) that are not the input's fault.
class IoError : public Error {
 public:
  explicit IoError(const std::string& what) : Error(what, kExitFailure) {}
};

}  // namespace mlkv
