// Helpers of the trainer tests: temporary directories, tiny token shards, a tiny config file, and
// running the built executables as subprocesses.
#pragma once
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/rng.h"
#include "data/shard_writer.h"

namespace mlkv::test {

namespace fs = std::filesystem;

// A fresh directory under the system temp dir, removed at the end (kept with MLKV_TEST_KEEP=1).
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    std::string tmpl = (fs::temp_directory_path() / ("mlkv-trainer-" + tag + "-XXXXXX")).string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    if (!std::getenv("MLKV_TEST_KEEP")) {
      std::error_code ec;
      fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
      fs::remove_all(path_, ec);
    }
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

// Shards of `tokens` tokens: a cycle of `period` distinct ids (vocab 128) repeated, so a model can
// learn it. Different `seed`s give different cycles.
inline void write_cycle_shards(const std::string& dir, int64_t tokens, int64_t period, uint64_t seed) {
  data::ShardWriterOptions o;
  o.out_dir = dir;
  o.vocab_size = 128;
  o.eod_id = 0;
  o.shard_tokens = tokens;
  o.source = "trainer test";
  std::vector<int32_t> ids(128);
  for (int i = 0; i < 128; ++i) ids[i] = i;
  Rng rng(seed);
  for (int i = 0; i < period; ++i) std::swap(ids[i], ids[i + rng.next_u64() % (128 - i)]);
  std::vector<int32_t> stream(static_cast<size_t>(tokens));
  for (int64_t i = 0; i < tokens; ++i) stream[i] = ids[i % period];
  fs::create_directories(dir);
  data::ShardWriter w(o);
  w.append(std::span<const int32_t>(stream));
  w.finish();
}

// The tiny MLKV run every subprocess test uses: 2 layers, d 32, 4 heads, one KV layer with 2 KV
// heads, vocab 128, 16-token windows, 30 steps, checkpoints every 5.
inline std::string tiny_config(const TempDir& dir, const std::string& extra = "") {
  std::ostringstream c;
  c << "[model]\nname = \"trainer-test\"\nlayers = 2\nd_model = 32\nheads = 4\nvocab_size = 128\nmax_seq_len = 32\n"
    << "[kv]\nkv_layers = 1\nkv_heads = 2\n"
    << "[train]\nsteps = 30\nmicro_batch = 4\ngrad_accum = 2\nseq_len = 16\nbackend = \"cpu\"\nthreads = 1\n"
    << "eval_interval = 10\neval_batches = 2\nseed = 7\n"
    << "[optim]\nlr = 1e-2\nwarmup_steps = 3\n"
    << "[data]\npath = \"" << dir / "data/train" << "\"\nval_path = \"" << dir / "data/val" << "\"\nprefetch = 2\n"
    << "[checkpoint]\ndir = \"" << dir / "ckpt" << "\"\ninterval = 5\nkeep_last = 2\n"
    << "[log]\ndir = \"" << dir / "log" << "\"\ninterval = 5\ntensorboard = true\n"
    << extra;
  const std::string path = dir / "run.toml";
  std::ofstream(path) << c.str();
  return path;
}

inline void make_tiny_data(const TempDir& dir) {
  write_cycle_shards(dir / "data/train", 20000, 37, 1);
  write_cycle_shards(dir / "data/val", 4000, 37, 1);  // the same cycle: validation measures learning
}

inline std::string bin(const std::string& name) { return std::string(MLKV_BINARY_DIR) + "/bin/" + name; }

struct Proc {
  pid_t pid = -1;
  std::string log_path;
};

// Starts `args` with stdout and stderr going to log_path; `env` adds NAME=VALUE entries.
inline Proc spawn(const std::vector<std::string>& args, const std::string& log_path,
                  const std::vector<std::string>& env = {}) {
  Proc p;
  p.log_path = log_path;
  p.pid = ::fork();
  if (p.pid == 0) {
    const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return p;
}

// Exit code, or 128 + signal for a killed process.
inline int wait_for(const Proc& p) {
  int status = 0;
  while (::waitpid(p.pid, &status, 0) < 0) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Non-blocking: true (and the exit code) once the process has ended.
inline bool try_wait(Proc& p, int& code) {
  int status = 0;
  if (::waitpid(p.pid, &status, WNOHANG) != p.pid) return false;
  code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return true;
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The rows of a run's metrics.jsonl, in order; none when the file is missing. Every line must be
// JSON (the trainer writes whole lines): a malformed one throws.
inline std::vector<nlohmann::json> metrics_rows(const std::string& path) {
  std::vector<nlohmann::json> rows;
  std::istringstream in(read_text(path));
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

// Runs to completion; returns the exit code and leaves the output in `output`.
inline int run(const std::vector<std::string>& args, std::string& output, const std::vector<std::string>& env = {}) {
  const std::string log = (fs::temp_directory_path() / ("mlkv-trainer-run-" + std::to_string(::getpid()) + ".log")).string();
  fs::remove(log);
  const int code = wait_for(spawn(args, log, env));
  output = read_text(log);
  fs::remove(log);
  return code;
}

}  // namespace mlkv::test
