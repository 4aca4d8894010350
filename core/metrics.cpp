// Progress line, metrics.jsonl and TensorBoard scalars (see metrics.h).
#include "core/metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/errors.h"
#include "core/logging.h"
#include "core/tensorboard.h"

namespace mlkv {
namespace {

std::string fmt(const char* f, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, x);
  return buf;
}

double unix_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Keeps the lines of metrics.jsonl whose step is <= start_step (and any line it cannot parse, so
// nothing unknown is thrown away), via a temporary file and a rename.
void truncate_after(const std::string& path, int64_t start_step) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return;  // absent (or a device: nothing to keep)
  std::ifstream in(path);
  if (!in) return;
  std::vector<std::string> kept;
  bool dropped = false;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.contains("step") && j["step"].is_number() && j["step"].get<int64_t>() > start_step) {
      dropped = true;
      continue;
    }
    kept.push_back(line);
  }
  if (!dropped) return;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    for (const auto& l : kept) out << l << '\n';
    if (!out) throw IoError(tmp + ": write failed");
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace

std::string format_count(double x) {
  const double a = std::fabs(x);
  if (a >= 1e12) return fmt("%.2fT", x / 1e12);
  if (a >= 1e9) return fmt("%.2fG", x / 1e9);
  if (a >= 1e6) return fmt("%.2fM", x / 1e6);
  if (a >= 1e3) return fmt("%.1fK", x / 1e3);
  return fmt("%.1f", x);
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = static_cast<int64_t>(std::llround(s));
  char buf[48];
  if (t >= 86400) std::snprintf(buf, sizeof buf, "%lldd%02lldh", static_cast<long long>(t / 86400), static_cast<long long>(t % 86400 / 3600));
  else if (t >= 3600) std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(t / 3600), static_cast<long long>(t % 3600 / 60));
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(t / 60), static_cast<long long>(t % 60));
  else std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(t));
  return buf;
}

std::string format_bytes(double b) {
  if (b >= 1024.0 * 1024 * 1024) return fmt("%.1f GiB", b / (1024.0 * 1024 * 1024));
  if (b >= 1024.0 * 1024) return fmt("%.1f MiB", b / (1024.0 * 1024));
  return fmt("%.1f KiB", b / 1024.0);
}

std::string format_peak(double flops, int act_bytes) {
  const char* dtype = act_bytes == 2 ? "bf16" : "fp32";
  if (flops >= 1e12) return fmt("%.0f TFLOP/s ", flops / 1e12) + dtype;
  return fmt("%.0f GFLOP/s ", flops / 1e9) + dtype;
}

std::string progress_line(const StepMetrics& m) {
  std::string s = "step " + std::to_string(m.step) + "/" + std::to_string(m.total_steps);
  s += " | loss " + (std::isfinite(m.loss) ? fmt("%.4f", m.loss) : std::string("nan"));
  s += " | lr " + fmt("%.2e", m.lr);
  s += " | gnorm " + fmt("%.3f", m.grad_norm);
  s += " | " + format_count(m.tokens_per_s) + " tok/s";
  s += " | MFU " + fmt("%.1f%%", 100.0 * m.mfu) + " (peak " + m.peak_label + ")";
  s += " | mem " + format_bytes(m.mem_bytes);
  s += " | ETA " + format_duration(m.eta_s);
  if (m.bad_steps > 0) s += " | skipped " + std::to_string(m.bad_steps);
  return s;
}

double peak_rss_bytes() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmHWM:", 0) == 0) return 1024.0 * std::strtod(line.c_str() + 6, nullptr);  // kB
  return 0;
}

MetricsWriter::MetricsWriter(const std::string& log_dir, bool tensorboard, int64_t start_step)
    : jsonl_path_(log_dir + "/metrics.jsonl") {
  std::filesystem::create_directories(log_dir);
  truncate_after(jsonl_path_, start_step);
  jsonl_fd_ = ::open(jsonl_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (jsonl_fd_ < 0) throw IoError(jsonl_path_ + ": cannot open for writing: " + std::strerror(errno));
  last_whole_step_ = start_step;
  if (tensorboard) {
    events_ = std::make_unique<tensorboard::EventWriter>(log_dir);
    // metrics.jsonl keeps steps <= start_step (above); TensorBoard must drop exactly the rest.
    // Every session writes it, a fresh one too: the readers behind TensorBoard's dashboards
    // (plugin_event_accumulator) take a run's first START as its beginning and purge only on
    // later ones, so a resume's START purges only if the first session wrote one as well.
    events_->add_session_start(start_step + 1);
  }
}

MetricsWriter::~MetricsWriter() {
  if (jsonl_fd_ >= 0) ::close(jsonl_fd_);
}

void MetricsWriter::fail(const std::string& why) {
  if (failed()) return;
  failure_ = why;
  log::error("metrics: " + why + "; nothing more is written to " + jsonl_path_ + " (whole up to step " +
             std::to_string(last_whole_step_) + ") or to TensorBoard. Free space in log.dir; the run checkpoints "
             "and stops with exit code 1, and --resume auto continues it");
}

// One write(2) per line, on an O_APPEND descriptor. A short or failed write is undone with
// ftruncate, so a reader never meets a half line.
void MetricsWriter::append_line(const std::string& line, int64_t step) {
  if (failed()) return;
  const off_t before = ::lseek(jsonl_fd_, 0, SEEK_END);
  size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(jsonl_fd_, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = n < 0 ? std::strerror(errno) : "no progress";
      if (done > 0 && (before < 0 || ::ftruncate(jsonl_fd_, before) != 0)) {
        fail(jsonl_path_ + ": write failed (" + why + ") and the partial line could not be removed (" +
             std::strerror(errno) + ")");
      } else {
        fail(jsonl_path_ + ": write failed at step " + std::to_string(step) + ": " + why);
      }
      return;
    }
    done += static_cast<size_t>(n);
  }
  last_whole_step_ = step;
}

template <typename Fn>
void MetricsWriter::to_events(Fn&& fn) {
  if (!events_ || failed()) return;
  try {
    fn(*events_);
  } catch (const Error& e) {
    fail(std::string("TensorBoard: ") + e.what());
  }
}

void MetricsWriter::log_step(const StepMetrics& m) {
  log::info(progress_line(m));
  // Non-finite numbers are not JSON: they become null.
  auto num = [](double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); };
  nlohmann::ordered_json j = {
      {"step", m.step},           {"total_steps", m.total_steps}, {"loss", num(m.loss)},
      {"lr", m.lr},               {"grad_norm", num(m.grad_norm)}, {"tokens_per_s", m.tokens_per_s},
      {"mfu", m.mfu},             {"peak_flops", m.peak_flops},   {"peak", m.peak_label},
      {"mem_bytes", m.mem_bytes}, {"eta_s", m.eta_s},             {"tokens", m.tokens},
      {"bad_steps", m.bad_steps}, {"time", unix_time()}};
  append_line(j.dump() + '\n', m.step);
  to_events([&](tensorboard::EventWriter& ev) {
    if (std::isfinite(m.loss)) ev.add_scalar("train/loss", m.loss, m.step);
    ev.add_scalar("train/lr", m.lr, m.step);
    if (std::isfinite(m.grad_norm)) ev.add_scalar("train/grad_norm", m.grad_norm, m.step);
    ev.add_scalar("train/tokens_per_s", m.tokens_per_s, m.step);
    ev.add_scalar("train/mfu", m.mfu, m.step);
  });
  flush();
}

void MetricsWriter::log_eval(const EvalMetrics& m) {
  log::info("step " + std::to_string(m.step) + " | val loss " + fmt("%.4f", m.val_loss) + " | val ppl " +
            fmt("%.2f", m.val_ppl) + " | " + format_count(static_cast<double>(m.tokens)) + " tokens");
  auto num = [](double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); };
  nlohmann::ordered_json j = {
      {"step", m.step}, {"val_loss", num(m.val_loss)}, {"val_ppl", num(m.val_ppl)}, {"val_tokens", m.tokens},
      {"time", unix_time()}};
  append_line(j.dump() + '\n', m.step);
  to_events([&](tensorboard::EventWriter& ev) {
    if (std::isfinite(m.val_loss)) ev.add_scalar("val/loss", m.val_loss, m.step);
    if (std::isfinite(m.val_ppl)) ev.add_scalar("val/ppl", m.val_ppl, m.step);
  });
  flush();
}

void MetricsWriter::flush() {
  to_events([](tensorboard::EventWriter& ev) { ev.flush(); });
}

}  // namespace mlkv
