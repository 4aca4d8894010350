// Training metrics on rank 0: the progress line, metrics.jsonl (one JSON object per logged step
// or validation pass, the figures of the progress line) and TensorBoard scalars.
//
// MFU follows DESIGN §4: tokens/s × FLOPs per token / (peak × devices), where FLOPs per token =
// 6·N_matmul + 12·L·d·T and the peak is log.peak_flops (default: H100 SXM bf16 dense, 989e12).
// The line always names the peak it assumed.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "core/config.h"

namespace mlkv {
namespace tensorboard {
class EventWriter;
}

struct StepMetrics {
  int64_t step = 0, total_steps = 0;
  double loss = 0;          // mean over the logged interval's finite steps
  double lr = 0;
  double grad_norm = 0;     // before clipping, of the last step
  double tokens_per_s = 0;  // all ranks together
  double mfu = 0;           // fraction of peak × devices
  double peak_flops = 0;
  std::string peak_label;   // "989 TFLOP/s bf16"
  double mem_bytes = 0;     // peak device memory (or peak RSS on the CPU)
  double eta_s = 0;
  int64_t tokens = 0;       // training targets so far
  int64_t bad_steps = 0;    // skipped (non-finite) steps in the interval
};

struct EvalMetrics {
  int64_t step = 0;
  double val_loss = 0, val_ppl = 0;
  int64_t tokens = 0;  // targets evaluated
};

// "123.4K", "1.23M", "12.0"
std::string format_count(double x);
// "1h02m", "3m07s", "12s"
std::string format_duration(double seconds);
// "12.3 GiB", "512.0 MiB"
std::string format_bytes(double bytes);
// "989 TFLOP/s bf16"
std::string format_peak(double flops, int act_bytes);
// The progress line: "step 120/2000 | loss 3.4567 | lr 2.50e-04 | gnorm 0.812 | 123.4K tok/s |
// MFU 41.2% (peak 989 TFLOP/s bf16) | mem 12.3 GiB | ETA 1h02m"
std::string progress_line(const StepMetrics& m);
// Peak resident set size of this process (VmHWM), for backends that do not count their memory.
double peak_rss_bytes();

// A write that fails (a full disk, a quota, a file-size limit, an I/O error) never throws and never
// leaves half a line: metrics.jsonl is cut back to its last whole line, the failure is logged once
// as an error naming the file and the reason, nothing more is written, and failed() turns true so
// the trainer checkpoints and stops (exit 1) instead of training on unrecorded.
class MetricsWriter {
 public:
  // Opens log_dir/metrics.jsonl for appending, first dropping lines with a step > start_step
  // (a resume re-does them; a fresh start at step 0 drops them all), and a TensorBoard event file
  // when `tensorboard` (starting with SessionLog START at start_step + 1). Only rank 0 constructs one. Throws
  // IoError when they cannot be opened.
  MetricsWriter(const std::string& log_dir, bool tensorboard, int64_t start_step);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  void log_step(const StepMetrics& m);   // progress line + JSONL + TensorBoard
  void log_eval(const EvalMetrics& m);
  void flush();
  const std::string& jsonl_path() const { return jsonl_path_; }
  bool failed() const { return !failure_.empty(); }
  const std::string& failure() const { return failure_; }  // what failed, and why

 private:
  void append_line(const std::string& line, int64_t step);
  template <typename Fn>
  void to_events(Fn&& fn);
  void fail(const std::string& why);

  std::string jsonl_path_;
  int jsonl_fd_ = -1;
  int64_t last_whole_step_ = -1;  // of the last line written whole
  std::string failure_;
  std::unique_ptr<tensorboard::EventWriter> events_;
};

}  // namespace mlkv
