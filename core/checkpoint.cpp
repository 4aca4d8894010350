// Checkpoint writing, finding, verifying and loading (layout and guarantees: checkpoint.h).
//
// Crash safety rests on three facts: every file is fsync'd inside a temporary directory, the
// directory is renamed into place in one step (and its parent fsync'd), and `latest` is replaced
// by a rename too. A SIGKILL therefore leaves either the old state or the new one, plus at most a
// ".step-*.tmp-<pid>" directory that the next save removes. A step directory that was damaged
// afterwards (truncated, edited) fails the size/CRC check of its manifest and is never taken.
#include "core/checkpoint.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <type_traits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/env.h"
#include "core/errors.h"
#include "core/logging.h"
#include "core/param_layout.h"
#include "core/safetensors.h"

namespace mlkv {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimFile = "optim.safetensors";
constexpr const char* kConfigFile = "config.toml";
constexpr const char* kStateFile = "state.json";
constexpr const char* kLatestFile = "latest";

std::string errno_text() { return std::strerror(errno); }

// ---- small POSIX helpers that report the path and the OS reason

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) throw IoError(path + ": cannot open to fsync: " + errno_text());
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  errno = saved;
  if (rc != 0) throw IoError(path + ": fsync failed: " + errno_text());
}

void write_file_durable(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw IoError(path + ": cannot create: " + errno_text());
  const char* p = text.data();
  size_t left = text.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = errno_text();
      ::close(fd);
      throw IoError(path + ": write failed: " + why);
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) throw IoError(path + ": fsync/close failed: " + errno_text());
}

void rename_or_throw(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) throw IoError("cannot rename " + from + " to " + to + ": " + errno_text());
}

std::string read_small_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CheckpointError(path + ": cannot read: " + errno_text());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Test hook (checkpoint.h): a pause between files so a SIGKILL can land inside a write.
void test_pause() {
  static const long ms = env_int("MLKV_TEST_SLOW_CHECKPOINT_MS", 0);
  if (ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

std::string hex32(uint32_t x) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", x);
  return buf;
}

// Step of a directory name "step-00000100", or -1.
int64_t step_of_name(const std::string& name) {
  if (name.size() <= 5 || name.rfind("step-", 0) != 0) return -1;
  int64_t v = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || v > (INT64_MAX - 9) / 10) return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

// Step directories of DIR, newest first.
std::vector<std::pair<int64_t, std::string>> step_dirs(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const int64_t s = step_of_name(e.path().filename().string());
    if (s >= 0 && e.is_directory(ec)) out.emplace_back(s, e.path().string());
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return out;
}

std::optional<std::string> read_latest_name(const std::string& dir) {
  std::ifstream in(dir + "/" + kLatestFile);
  std::string name;
  if (!in || !std::getline(in, name) || step_of_name(name) < 0) return std::nullopt;
  return name;
}

// Removes a directory by first renaming it out of the "step-*" namespace, so a kill during the
// (non-atomic) recursive delete never leaves a half-deleted directory that looks like a checkpoint.
void remove_dir_safely(const fs::path& path) {
  std::string doomed_name = ".";
  doomed_name += path.filename().string();
  doomed_name += ".del-";
  doomed_name += std::to_string(::getpid());
  const fs::path doomed = path.parent_path() / doomed_name;
  std::error_code ec;
  fs::rename(path, doomed, ec);
  fs::remove_all(ec ? path : doomed, ec);
  if (ec) log::warn("could not remove old checkpoint " + path.string() + ": " + ec.message());
}

// Leftovers of writers that were killed: ".step-*.tmp-<pid>" and ".step-*.del-<pid>" whose process
// is gone. A live pid is left alone (another writer on this host may be mid-write).
void remove_stale_temporaries(const std::string& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(".step-", 0) != 0 && name.rfind(".latest.tmp-", 0) != 0) continue;
    const size_t dash = name.rfind('-');
    const long pid = std::strtol(name.c_str() + dash + 1, nullptr, 10);
    if (pid <= 0 || pid == ::getpid()) continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM) continue;
    std::error_code rm;
    fs::remove_all(e.path(), rm);
  }
}

// ---- state.json

json kv_plan_json(const KvPlan& plan, int heads) {
  return {{"name", plan.name(heads)},
          {"owners", plan.owners()},
          {"owner", plan.owner},
          {"kv_heads", plan.kv_heads},
          {"rope_shared_keys", plan.rope_shared_keys}};
}

json file_entry(const std::string& path) {
  std::error_code ec;
  const auto bytes = fs::file_size(path, ec);
  if (ec) throw IoError(path + ": cannot stat: " + ec.message());
  return {{"bytes", bytes}, {"crc32", hex32(crc32_file(path))}};
}

// state_crc32 covers the manifest's own text: the CRC-32 of state.json as written without that
// member (ordered JSON, dump(2)). A reader re-dumps what it parsed minus the member, so any change
// of a value, a key or the order is caught, while the file stays plain JSON that jq reads.
constexpr const char* kStateCrcKey = "state_crc32";
uint32_t manifest_crc(const json& state_without_crc) {
  const std::string text = state_without_crc.dump(2);
  return crc32_update(0, text.data(), text.size());
}

uint32_t parse_hex32(const std::string& s, const std::string& where) {
  if (s.size() != 8 || s.find_first_not_of("0123456789abcdef") != std::string::npos)
    throw CheckpointError(where + ": \"" + s + "\" is not 8 lower-case hex digits");
  return static_cast<uint32_t>(std::stoul(s, nullptr, 16));
}

template <typename Int>
std::string join_ints(const std::vector<Int>& v) {
  std::string s;
  for (Int x : v) {
    if (!s.empty()) s += ',';
    s += std::to_string(x);
  }
  return s;
}

// Empty when every file of the manifest exists with its recorded size; otherwise the reason.
std::string size_problem(const std::string& dir, const CheckpointManifest& m) {
  for (const auto& f : m.files) {
    std::error_code ec;
    const auto actual = fs::file_size(dir + "/" + f.name, ec);
    if (ec) return dir + "/" + f.name + ": missing (" + ec.message() + ")";
    if (actual != f.bytes)
      return dir + "/" + f.name + ": " + std::to_string(actual) + " bytes, the manifest records " +
             std::to_string(f.bytes) + (actual < f.bytes ? " (truncated)" : "");
  }
  return "";
}

CheckpointManifest read_manifest(const std::string& dir) {
  const std::string path = dir + "/" + kStateFile;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw CheckpointError(dir + ": not a checkpoint (no " + kStateFile + ")");
  return parse_manifest(read_small_file(path), path);
}

// The tensors `prefix + view.name` of a safetensors file must be exactly the layout's views, by
// name and shape, and nothing else with that prefix.
void check_tensors(const std::string& path, const ParamLayout& layout, const std::string& prefix,
                   const safetensors::Reader& r) {
  size_t expected = 0;
  for (const ParamView& v : layout.views()) {
    const std::string name = prefix + v.name;
    const safetensors::TensorInfo* t = r.find(name);
    if (!t) throw CheckpointError(path + ": no tensor \"" + name + "\" (the checkpoint is of another model)");
    if (t->shape != v.shape) {
      throw CheckpointError(path + ": tensor \"" + name + "\" has shape [" + join_ints(t->shape) + "], the model needs [" +
                            join_ints(v.shape) + "]");
    }
    ++expected;
  }
  size_t with_prefix = 0;
  for (const auto& t : r.tensors()) with_prefix += t.name.rfind(prefix, 0) == 0;
  if (with_prefix != expected)
    throw CheckpointError(path + ": holds " + std::to_string(with_prefix) + " tensors \"" + prefix + "*\", the model has " +
                          std::to_string(expected));
}

// Reads the (already checked) tensors `prefix + view.name` into a flat ParamLayout buffer.
std::vector<float> read_flat(const ParamLayout& layout, const std::string& prefix, const safetensors::Reader& r) {
  std::vector<float> flat(static_cast<size_t>(layout.total()), 0.0f);
  for (const ParamView& v : layout.views()) r.read_f32(prefix + v.name, flat.data() + v.offset, v.numel);
  return flat;
}

// A checkpoint that passed every check of verify_checkpoint, with what the checks read.
struct Verified {
  std::string dir;
  CheckpointManifest manifest;
  Config config;
};

Verified verify(const std::string& dir, bool with_optimizer) {
  Verified v;
  v.dir = dir;
  v.manifest = read_manifest(dir);
  const CheckpointManifest& m = v.manifest;
  const std::string state_path = dir + "/" + kStateFile;
  for (const char* needed : {kModelFile, kConfigFile})
    if (!m.find(needed)) throw CheckpointError(state_path + ": the manifest lists no " + needed);
  if (const std::string p = size_problem(dir, m); !p.empty()) throw CheckpointError(p);
  for (const auto& f : m.files) {
    if (!with_optimizer && f.name == kOptimFile) continue;
    const uint32_t crc = crc32_file(dir + "/" + f.name);
    if (crc != f.crc32)
      throw CheckpointError(dir + "/" + f.name + ": CRC-32 " + hex32(crc) + ", the manifest records " + hex32(f.crc32) +
                            " (the file is corrupt)");
  }

  const std::string config_path = dir + "/" + kConfigFile;
  v.config = config_from_toml_string(read_small_file(config_path), config_path);
  const ModelSpec spec = v.config.spec();
  const ParamLayout layout(spec);
  // The manifest's model and plan must agree with the config's: a mismatch means an edited (or
  // mixed-up) checkpoint, whose tensors would be read under the wrong shapes.
  std::vector<std::string> diffs;
  auto cmp = [&](const char* what, int64_t in_state, int64_t in_config) {
    if (in_state != in_config)
      diffs.push_back(std::string(what) + " " + std::to_string(in_state) + " in " + kStateFile + ", " +
                      std::to_string(in_config) + " in " + kConfigFile);
  };
  cmp("model.layers", m.layers, spec.layers);
  cmp("model.d_model", m.d_model, spec.d_model);
  cmp("model.heads", m.heads, spec.heads);
  cmp("model.vocab", m.vocab, spec.vocab);
  cmp("model.ffn", m.ffn, spec.ffn);
  cmp("model.params", m.params, layout.total_params());
  cmp("kv_plan.kv_heads", m.kv_heads, spec.kv.kv_heads);
  cmp("kv_plan.rope_shared_keys", m.rope_shared_keys, spec.kv.rope_shared_keys);
  if (m.kv_owner != spec.kv.owner)
    diffs.push_back("kv_plan.owner [" + join_ints(m.kv_owner) + "] in " + kStateFile + ", [" + join_ints(spec.kv.owner) +
                    "] in " + kConfigFile);
  if (!diffs.empty()) {
    std::string msg = dir + ": " + kStateFile + " and " + kConfigFile + " describe different models:";
    for (const auto& d : diffs) msg += "\n  - " + d;
    throw CheckpointError(msg);
  }

  const std::string model_path = dir + "/" + kModelFile;
  check_tensors(model_path, layout, "", safetensors::Reader(model_path));
  if (with_optimizer && m.find(kOptimFile)) {
    const std::string optim_path = dir + "/" + kOptimFile;
    const safetensors::Reader r(optim_path);
    check_tensors(optim_path, layout, "m.", r);
    check_tensors(optim_path, layout, "v.", r);
  }
  return v;
}

// The newest whole checkpoint of DIR (find_latest's order); `skipped` collects why others failed.
std::optional<Verified> find_whole(const std::string& dir, bool with_optimizer, std::vector<std::string>& skipped) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return std::nullopt;
  auto attempt = [&](const std::string& step_dir) -> std::optional<Verified> {
    try {
      return verify(step_dir, with_optimizer);
    } catch (const Error& e) {
      skipped.push_back(e.what());
      log::warn("skipping checkpoint " + step_dir + ": " + e.what());
      return std::nullopt;
    }
  };
  // `latest` first: after a resume from an older checkpoint it names the live timeline, which a
  // newer-numbered leftover of the abandoned one must not override.
  std::string tried;
  if (const auto name = read_latest_name(dir)) {
    tried = dir + "/" + *name;
    if (fs::is_directory(tried, ec)) {
      if (auto v = attempt(tried)) return v;
    } else {
      log::warn("`latest` in " + dir + " names " + *name + ", which does not exist");
    }
  }
  for (const auto& [step, path] : step_dirs(dir)) {
    if (path == tried) continue;
    if (auto v = attempt(path)) {
      if (!skipped.empty()) log::warn("falling back to " + path + ", the newest whole checkpoint of " + dir);
      return v;
    }
  }
  return std::nullopt;
}

CheckpointData load(const std::string& path, bool with_optimizer) {
  std::optional<Verified> v;
  std::error_code ec;
  if (fs::exists(fs::path(path) / kStateFile, ec)) {
    v = verify(path, with_optimizer);  // an explicit step directory: its problem is the error
  } else if (!fs::is_directory(path, ec)) {
    throw CheckpointError(path + ": no such checkpoint directory");
  } else {
    std::vector<std::string> skipped;
    v = find_whole(path, with_optimizer, skipped);
    if (!v) {
      std::string msg = path + ": holds no complete checkpoint (no whole step-*/ directory)";
      for (const auto& s : skipped) msg += "\n  - " + s;
      throw CheckpointError(msg);
    }
  }
  CheckpointData data;
  data.dir = v->dir;
  data.config = std::move(v->config);
  data.state = v->manifest.state;
  const ParamLayout layout(data.config.spec());
  data.master = read_flat(layout, "", safetensors::Reader(data.dir + "/" + kModelFile));
  if (with_optimizer && v->manifest.find(kOptimFile)) {
    const safetensors::Reader r(data.dir + "/" + kOptimFile);
    data.m = read_flat(layout, "m.", r);
    data.v = read_flat(layout, "v.", r);
  }
  return data;
}

}  // namespace

// ---- public API

std::string checkpoint_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

void probe_writable_dir(const std::string& dir, const std::string& key) {
  const std::string where = key + " = \"" + dir + "\"";
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw ConfigError(where + ": cannot create the directory: " + ec.message());
  const std::string probe = dir + "/.probe-" + std::to_string(::getpid());
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw ConfigError(where + ": not writable: " + errno_text());
  const bool wrote = ::write(fd, "ok", 2) == 2 && ::fsync(fd) == 0;
  const std::string why = errno_text();
  ::close(fd);
  const bool renamed = wrote && ::rename(probe.c_str(), (probe + ".renamed").c_str()) == 0;
  ::unlink(probe.c_str());
  ::unlink((probe + ".renamed").c_str());
  if (!wrote) throw ConfigError(where + ": cannot write a file there: " + why);
  if (!renamed) throw ConfigError(where + ": cannot rename a file there: " + errno_text());
}

namespace {

// Moments to write beside the model (save_checkpoint with a non-empty m/v): full ParamLayout buffers.
struct MomentsToWrite {
  const std::vector<float>* m;
  const std::vector<float>* v;
};

// The one writer behind save_checkpoint and save_checkpoint_streamed (protocol: checkpoint.h).
std::string save_impl(const std::string& dir, const Config& config, const TrainState& st, const CheckpointFill& fill,
                      const MomentsToWrite* moments, int keep_last) {
  const ModelSpec spec = config.spec();
  const ParamLayout layout(spec);

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw IoError(dir + ": cannot create the checkpoint directory: " + ec.message());
  remove_stale_temporaries(dir);

  const std::string name = checkpoint_dir_name(st.step);
  const std::string final_dir = dir + "/" + name;
  const std::string tmp = dir + "/." + name + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(tmp, ec);
  if (!fs::create_directory(tmp, ec) || ec) throw IoError(tmp + ": cannot create: " + ec.message());
  // A failure before the rename (an I/O error, or a streamed `fill` that throws halfway through a
  // multi-GB model) removes the partial directory instead of leaving it for the next save.
  struct TmpGuard {
    const std::string& path;
    bool armed = true;
    ~TmpGuard() {
      if (!armed) return;
      std::error_code e;
      fs::remove_all(path, e);
    }
  } tmp_guard{tmp};

  json files = json::object();
  {
    // One tensor in memory at a time: the writer asks `fill` for each in turn. The CRC is taken by
    // re-reading the finished file in 1 MiB chunks (file_entry).
    safetensors::Writer w;
    for (const ParamView& v : layout.views())
      w.add_lazy(v.name, safetensors::DType::F32, v.shape, [&fill, &v](float* out) { fill(v, out); });
    w.set_metadata("format", "mlkv-checkpoint-model");
    w.set_metadata("step", std::to_string(st.step));
    w.write(tmp + "/" + kModelFile);
    files[kModelFile] = file_entry(tmp + "/" + kModelFile);
  }
  test_pause();
  if (moments) {
    safetensors::Writer w;
    for (const ParamView& v : layout.views()) w.add_f32("m." + v.name, moments->m->data() + v.offset, v.shape);
    for (const ParamView& v : layout.views()) w.add_f32("v." + v.name, moments->v->data() + v.offset, v.shape);
    w.set_metadata("format", "mlkv-checkpoint-optim");
    w.write(tmp + "/" + kOptimFile);
    files[kOptimFile] = file_entry(tmp + "/" + kOptimFile);
    test_pause();
  }
  write_file_durable(tmp + "/" + kConfigFile, config_to_toml(config));
  files[kConfigFile] = file_entry(tmp + "/" + kConfigFile);
  test_pause();

  char rng_hex[17];
  std::snprintf(rng_hex, sizeof rng_hex, "%016llx", static_cast<unsigned long long>(st.rng_state));
  json state = {
      {"format", "mlkv-checkpoint"},
      {"format_version", kCheckpointFormatVersion},
      {"step", st.step},
      {"adam_t", st.adam_t},
      {"rng_state", rng_hex},
      {"sampler", {{"epoch", st.sampler.epoch}, {"next_sample", st.sampler.next_sample}}},
      {"tokens_seen", st.tokens_seen},
      {"last_val_loss", std::isfinite(st.last_val_loss) ? json(st.last_val_loss) : json(nullptr)},
      {"consecutive_bad", st.consecutive_bad},
      {"dp", st.dp},
      {"tp", st.tp},
      {"global_batch", st.global_batch},
      {"model",
       {{"layers", spec.layers}, {"d_model", spec.d_model}, {"heads", spec.heads}, {"vocab", spec.vocab},
        {"ffn", spec.ffn}, {"params", layout.total_params()}}},
      {"kv_plan", kv_plan_json(spec.kv, spec.heads)},
      {"files", files},
  };
  state[kStateCrcKey] = hex32(manifest_crc(state));  // last, over everything above
  write_file_durable(tmp + "/" + kStateFile, state.dump(2) + "\n");
  fsync_path(tmp, true);
  test_pause();

  // Into place. A directory of the same step (a re-run after a resume from an older checkpoint)
  // is moved aside first: rename(2) does not replace a non-empty directory.
  std::string replaced;
  if (fs::exists(final_dir)) {
    replaced = dir + "/." + name + ".del-" + std::to_string(::getpid());
    fs::remove_all(replaced, ec);
    rename_or_throw(final_dir, replaced);
  }
  rename_or_throw(tmp, final_dir);
  tmp_guard.armed = false;
  fsync_path(dir, true);
  if (!replaced.empty()) fs::remove_all(replaced, ec);
  test_pause();

  const std::string latest_tmp = dir + "/.latest.tmp-" + std::to_string(::getpid());
  write_file_durable(latest_tmp, name + "\n");
  rename_or_throw(latest_tmp, dir + "/" + kLatestFile);
  fsync_path(dir, true);

  if (keep_last > 0) {
    const auto latest = read_latest_name(dir);
    int kept = 0;
    for (const auto& [step, path] : step_dirs(dir)) {
      const std::string base = fs::path(path).filename().string();
      if (base == name || (latest && base == *latest)) continue;  // always kept, not counted twice
      if (++kept < keep_last) continue;  // the one just written is one of the keep_last
      remove_dir_safely(path);
    }
  }
  return final_dir;
}

}  // namespace

std::string save_checkpoint_streamed(const std::string& dir, const Config& config, const TrainState& state,
                                     const CheckpointFill& fill, int keep_last) {
  return save_impl(dir, config, state, fill, nullptr, keep_last);
}

std::string save_checkpoint(const std::string& dir, const CheckpointData& data, int keep_last) {
  const size_t total = static_cast<size_t>(ParamLayout(data.config.spec()).total());
  if (data.master.size() != total)
    throw Error("save_checkpoint: master has " + std::to_string(data.master.size()) + " floats, the layout " +
                std::to_string(total));
  const bool with_optim = !data.m.empty();
  if (with_optim && (data.m.size() != total || data.v.size() != total))
    throw Error("save_checkpoint: optimizer moments do not match the layout");
  const MomentsToWrite moments{&data.m, &data.v};
  const float* master = data.master.data();
  return save_impl(
      dir, data.config, data.state,
      [master](const ParamView& v, float* out) { std::copy_n(master + v.offset, v.numel, out); },
      with_optim ? &moments : nullptr, keep_last);
}

CheckpointData load_checkpoint(const std::string& path) { return load(path, true); }
CheckpointData load_checkpoint_weights(const std::string& path) { return load(path, false); }

const CheckpointManifest::File* CheckpointManifest::find(const std::string& name) const {
  for (const File& f : files)
    if (f.name == name) return &f;
  return nullptr;
}

// A JSON integer that fits T; anything else (a float, 1e300, a string) is a CheckpointError, never
// nlohmann's float-to-int conversion, which is undefined behaviour out of range (fuzz finding).
template <typename T>
T integer(const json& j, const std::string& path) {
  if (!j.is_number_integer()) throw CheckpointError(path + ": corrupt manifest: " + j.dump() + " is not an integer");
  if (j.is_number_unsigned() ? j.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<T>::max())
                             : (j.get<int64_t>() < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
                                (std::is_signed_v<T> && j.get<int64_t>() > static_cast<int64_t>(std::numeric_limits<T>::max()))))
    throw CheckpointError(path + ": corrupt manifest: " + j.dump() + " is out of range");
  return j.is_number_unsigned() ? static_cast<T>(j.get<uint64_t>()) : static_cast<T>(j.get<int64_t>());
}
static std::vector<int> integers(const json& j, const std::string& path) {
  if (!j.is_array()) throw CheckpointError(path + ": corrupt manifest: " + j.dump() + " is not a list");
  std::vector<int> out;
  for (const json& x : j) out.push_back(integer<int>(x, path));
  return out;
}

CheckpointManifest parse_manifest(const std::string& text, const std::string& path) {
  CheckpointManifest m;
  try {
    json s = json::parse(text);
    if (!s.is_object() || !s.contains("format") || s["format"] != "mlkv-checkpoint")
      throw CheckpointError(path + ": not an mlkv checkpoint manifest (format is not \"mlkv-checkpoint\")");
    const int version = integer<int>(s.at("format_version"), path);
    if (version < 1 || version > kCheckpointFormatVersion)
      throw CheckpointError(path + ": format_version " + std::to_string(version) + ", this build reads 1.." +
                            std::to_string(kCheckpointFormatVersion));
    // Integrity first: a damaged manifest is reported as such, not as whatever field it broke.
    if (s.contains(kStateCrcKey)) {
      const uint32_t recorded = parse_hex32(s[kStateCrcKey].get<std::string>(), path + ": " + kStateCrcKey);
      s.erase(kStateCrcKey);
      const uint32_t actual = manifest_crc(s);
      if (actual != recorded)
        throw CheckpointError(path + ": " + kStateCrcKey + " " + hex32(recorded) + " but the manifest's CRC-32 is " +
                              hex32(actual) + " (state.json was changed or damaged)");
    } else if (version >= 2) {
      throw CheckpointError(path + ": no " + std::string(kStateCrcKey) + " (state.json was changed or damaged)");
    }
    for (const auto& [name, entry] : s.at("files").items()) {
      if (name.find('/') != std::string::npos || name.empty() || name[0] == '.')
        throw CheckpointError(path + ": bad file name \"" + name + "\" in the manifest");
      m.files.push_back({name, integer<uint64_t>(entry.at("bytes"), path),
                         parse_hex32(entry.at("crc32").get<std::string>(), path + ": files." + name + ".crc32")});
    }
    const json& model = s.at("model");
    m.layers = integer<int>(model.at("layers"), path);
    m.d_model = integer<int>(model.at("d_model"), path);
    m.heads = integer<int>(model.at("heads"), path);
    m.vocab = integer<int64_t>(model.at("vocab"), path);
    m.ffn = integer<int>(model.at("ffn"), path);
    m.params = integer<int64_t>(model.at("params"), path);
    const json& plan = s.at("kv_plan");
    m.kv_owner = integers(plan.at("owner"), path);
    m.kv_heads = integer<int>(plan.at("kv_heads"), path);
    m.rope_shared_keys = plan.at("rope_shared_keys").get<bool>();
    TrainState& st = m.state;
    st.step = integer<int64_t>(s.at("step"), path);
    st.adam_t = integer<int64_t>(s.at("adam_t"), path);
    const std::string rng = s.at("rng_state").get<std::string>();
    if (rng.empty() || rng.size() > 16 || rng.find_first_not_of("0123456789abcdef") != std::string::npos)
      throw CheckpointError(path + ": rng_state \"" + rng + "\" is not a 64-bit hex number");
    st.rng_state = std::stoull(rng, nullptr, 16);
    st.sampler.epoch = integer<uint64_t>(s.at("sampler").at("epoch"), path);
    st.sampler.next_sample = integer<uint64_t>(s.at("sampler").at("next_sample"), path);
    st.tokens_seen = integer<int64_t>(s.at("tokens_seen"), path);
    st.last_val_loss = s.at("last_val_loss").is_null() ? NAN : s.at("last_val_loss").get<double>();
    st.consecutive_bad = integer<int64_t>(s.at("consecutive_bad"), path);
    st.dp = s.contains("dp") ? integer<int>(s["dp"], path) : 1;
    st.tp = s.contains("tp") ? integer<int>(s["tp"], path) : 1;
    st.global_batch = s.contains("global_batch") ? integer<int64_t>(s["global_batch"], path) : 0;
    if (st.step < 0 || st.tokens_seen < 0 || st.consecutive_bad < 0 || st.dp < 1 || st.tp < 1 ||
        st.global_batch < 0)
      throw CheckpointError(path + ": negative step, counter or layout in the manifest");
  } catch (const json::exception& e) {
    throw CheckpointError(path + ": corrupt manifest: " + e.what());
  }
  return m;
}

void verify_checkpoint(const std::string& step_dir, bool with_optimizer) { (void)verify(step_dir, with_optimizer); }

std::optional<std::string> find_latest(const std::string& dir) {
  std::vector<std::string> skipped;
  if (auto v = find_whole(dir, true, skipped)) return v->dir;
  return std::nullopt;
}

std::vector<std::string> checkpoint_dirs(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& [step, path] : step_dirs(dir)) out.push_back(path);
  return out;
}

void check_resume_batch(const CheckpointData& c, int64_t run_global_batch, bool allow) {
  const TrainSection& t = c.config.train;
  const int64_t written = c.state.global_batch > 0 ? c.state.global_batch
                                                   : int64_t{t.micro_batch} * t.grad_accum * c.state.dp;
  if (written == run_global_batch) return;
  std::ostringstream what;
  what << c.dir << " was written with a global batch of " << written << " sequences per step (micro_batch "
       << t.micro_batch << " x grad_accum " << t.grad_accum << " x dp " << c.state.dp << "); this run's is "
       << run_global_batch;
  if (!allow) {
    throw ConfigError(what.str() + ". Resuming would change the tokens of every remaining step under a schedule "
                      "planned in steps. Keep micro_batch x grad_accum x dp equal (with fewer ranks, raise "
                      "train.grad_accum), or set train.allow_batch_change = true to resume anyway.");
  }
  log::warn("GLOBAL BATCH CHANGED on resume: " + what.str() + " (train.allow_batch_change = true)");
}

void check_compatible(const Config& checkpoint, const Config& run, const std::string& where) {
  const ModelSpec a = checkpoint.spec(), b = run.spec();
  std::vector<std::string> diffs;
  auto cmp = [&](const char* what, auto x, auto y) {
    if (x != y) {
      std::ostringstream o;
      o << what << " " << x << " in the checkpoint, " << y << " in this run";
      diffs.push_back(o.str());
    }
  };
  cmp("model.layers", a.layers, b.layers);
  cmp("model.d_model", a.d_model, b.d_model);
  cmp("model.heads", a.heads, b.heads);
  cmp("model.vocab_size", a.vocab, b.vocab);
  cmp("MLP width (model.ffn)", a.ffn, b.ffn);
  cmp("rotary dims (model.rotary_pct)", a.rot_dims(), b.rot_dims());
  if (a.layers == b.layers && (a.kv.owner != b.kv.owner || a.kv.kv_heads != b.kv.kv_heads)) {
    diffs.push_back("KV plan " + a.kv.name(a.heads) + " (owners " + join_ints(a.kv.owners()) + ", " +
                    std::to_string(a.kv.kv_heads) + " KV heads) in the checkpoint, " + b.kv.name(b.heads) +
                    " (owners " + join_ints(b.kv.owners()) + ", " + std::to_string(b.kv.kv_heads) +
                    " KV heads) in this run");
  }
  if (a.kv.rope_shared_keys != b.kv.rope_shared_keys)
    diffs.push_back(std::string("kv.rope_shared_keys ") + (a.kv.rope_shared_keys ? "true" : "false") +
                    " in the checkpoint, " + (b.kv.rope_shared_keys ? "true" : "false") + " in this run");
  if (!diffs.empty()) {
    std::string msg = where + " is a checkpoint of another model, refusing it:";
    for (const auto& d : diffs) msg += "\n  - " + d;
    msg += "\n  (use the config it was written with, or convert it with mlkv-convert)";
    throw CheckpointError(msg);
  }
  if (a.rotary_base != b.rotary_base || a.ln_eps != b.ln_eps)
    log::warn(where + ": rotary_base/ln_eps differ from this run's; continuing with this run's values");
}

}  // namespace mlkv
