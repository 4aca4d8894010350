// The training loop (see trainer.h for the shape of one step).
#include "core/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <exception>

#include "core/backend.h"
#include "core/checkpoint.h"
#include "core/errors.h"
#include "core/logging.h"
#include "core/metrics.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/param_layout.h"
#include "core/rng.h"
#include "core/signals.h"
#include "parallel/context.h"
#include "parallel/topology.h"

namespace mlkv {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

class LoaderSource final : public TokenSource {
 public:
  explicit LoaderSource(const data::LoaderOptions& o) : loader_(o) {}
  void next(std::vector<int32_t>& rows) override { loader_.next(rows); }
  data::SamplerState state() const override { return loader_.state(); }
  void restore(const data::SamplerState& s) override { loader_.restore(s); }

 private:
  data::Loader loader_;
};

class RepeatingSource final : public TokenSource {
 public:
  RepeatingSource(int64_t vocab, int64_t period, uint64_t seed, const SourceSpec& spec) : spec_(spec) {
    if (period < 2 || period > vocab) throw ConfigError("repeating source: period must be in [2, vocab]");
    if (spec.global_batch % spec.dp_size != 0) throw ConfigError("repeating source: global batch % dp != 0");
    // `period` distinct ids: a partial Fisher–Yates shuffle of [0, vocab).
    std::vector<int32_t> ids(static_cast<size_t>(vocab));
    for (int64_t i = 0; i < vocab; ++i) ids[i] = static_cast<int32_t>(i);
    Rng rng(seed);
    for (int64_t i = 0; i < period; ++i) std::swap(ids[i], ids[i + rng.next_u64() % static_cast<uint64_t>(vocab - i)]);
    cycle_.assign(ids.begin(), ids.begin() + period);
  }
  void next(std::vector<int32_t>& rows) override {
    const int64_t per_rank = spec_.global_batch / spec_.dp_size, width = spec_.seq_len + 1;
    rows.resize(static_cast<size_t>(per_rank * width));
    const uint64_t first = state_.next_sample + static_cast<uint64_t>(spec_.dp_rank * per_rank);
    for (int64_t r = 0; r < per_rank; ++r) {
      const uint64_t start = (first + r) * static_cast<uint64_t>(spec_.seq_len);
      for (int64_t t = 0; t < width; ++t) rows[r * width + t] = cycle_[(start + t) % cycle_.size()];
    }
    state_.next_sample += static_cast<uint64_t>(spec_.global_batch);
  }
  data::SamplerState state() const override { return state_; }
  void restore(const data::SamplerState& s) override { state_ = s; }

 private:
  SourceSpec spec_;
  std::vector<int32_t> cycle_;
  data::SamplerState state_;
};

// Runs `fn` on rank 0 only (checkpoint writes, directory probes). A failure there stops every
// rank: the root rethrows its own error, the others a pointer to it.
template <typename Fn>
void on_root(parallel::Context& ctx, Fn&& fn) {
  std::exception_ptr error;
  if (ctx.is_root()) {
    try {
      fn();
    } catch (...) {
      error = std::current_exception();
    }
  }
  const bool failed = ctx.any_rank_true(error != nullptr);
  if (error) std::rethrow_exception(error);
  if (failed) throw Error("rank 0 failed; its log says why");
}

// One training job; train() runs it. Members hold what lives for the whole run.
class Run {
 public:
  explicit Run(const TrainerOptions& options) : opt_(options), cfg_(options.config) {}
  TrainResult go();

 private:
  void setup();
  void init_state();
  bool run_step();  // false once the run must stop
  void log_interval(bool force);
  bool log_dir_failed();  // collective: metrics could not be written on rank 0
  [[noreturn]] void stop_on_data_error(std::exception_ptr own_error);
  void validate();
  void write_checkpoint(const char* why);
  TrainResult finish(int exit_code);

  TrainerOptions opt_;
  Config cfg_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<parallel::Context> ctx_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<AdamW> adamw_;
  std::unique_ptr<TokenSource> train_src_, val_src_;
  std::unique_ptr<MetricsWriter> metrics_;
  TrainState st_;
  Rng rng_;
  int64_t start_step_ = 0, last_ckpt_step_ = -1, global_batch_ = 0;
  bool converted_start_ = false;  // weights from train.init_from: validate them before step 1
  bool resumed_after_bad_steps_ = false;  // the checkpoint stopped at train.max_bad_steps
  double flops_per_token_ = 0;
  std::string last_ckpt_path_;
  TrainResult result_;
  std::vector<int32_t> rows_, tokens_, targets_;

  // The current log interval.
  struct Interval {
    int64_t steps = 0, finite = 0, bad = 0, tokens = 0;
    double loss_sum = 0, step_seconds = 0, last_lr = 0, last_gnorm = 0;
  } iv_;
  Clock::time_point run_t0_ = Clock::now();
};

void Run::setup() {
  if (opt_.install_signal_handlers) signals::install();
  // A file-size limit (ulimit -f) must be a write error we handle (a checkpoint, a clear message),
  // not a SIGXFSZ that ends the process on the spot.
  std::signal(SIGXFSZ, SIG_IGN);
  backend_ = make_backend(cfg_.train, parallel::local_rank());
  ctx_ = parallel::make_context(cfg_, *backend_);
  const auto& topo = ctx_->topo();
  log::set_rank(topo.world_rank);
  const ModelSpec spec = cfg_.spec();

  model_ = std::make_unique<Model>(spec, *backend_, cfg_.train.micro_batch, cfg_.train.seq_len,
                                   parse_recompute(cfg_.train.recompute), ctx_->model_parallel());
  adamw_ = ctx_->make_optimizer(*model_, cfg_.optim);
  global_batch_ = int64_t{cfg_.train.micro_batch} * cfg_.train.grad_accum * topo.dp;
  flops_per_token_ = spec.flops_per_token(cfg_.train.seq_len);
  init_state();

  SourceSpec src{cfg_.train.seq_len, global_batch_, topo.dp_rank, topo.dp, false};
  const SourceFactory make = opt_.make_source ? opt_.make_source : [this](const SourceSpec& s) {
    return make_config_source(cfg_, s);
  };
  train_src_ = make(src);
  train_src_->restore(st_.sampler);
  src.validation = true;
  val_src_ = make(src);
  if (!val_src_) log::info("no validation data (data.val_path / data.val_fraction): validation is off");

  // Unwritable output directories stop the run here, before any training (issue 4), and only
  // after every input (config, checkpoint, data) passed its checks, so that a run refused for
  // bad input leaves no empty directories behind.
  on_root(*ctx_, [&] {
    probe_writable_dir(cfg_.checkpoint.dir, "checkpoint.dir");
    probe_writable_dir(cfg_.log.dir, "log.dir");
  });

  if (ctx_->is_root()) metrics_ = std::make_unique<MetricsWriter>(cfg_.log.dir, cfg_.log.tensorboard, start_step_);
  log::info(log::cat("model ", cfg_.model.name, ": ", spec.layers, " layers, d ", spec.d_model, ", ", spec.heads,
                     " heads, ", spec.kv.name(spec.heads), ", ", format_count(static_cast<double>(model_->layout().total_params())),
                     " params | backend ", backend_->name(), " | ", topo.describe()));
  log::info("attention " + backend_->attention_plan(spec.head_dim(), spec.heads, spec.kv.kv_heads));
  log::info(log::cat("batch ", cfg_.train.micro_batch, " x ", cfg_.train.seq_len, " tokens x ", cfg_.train.grad_accum,
                     " accum x ", topo.dp, " dp = global batch ", global_batch_, " sequences, ",
                     global_batch_ * cfg_.train.seq_len, " tokens/step | steps ",
                     start_step_, " -> ", cfg_.train.steps, " | checkpoints in ", cfg_.checkpoint.dir, " | logs in ",
                     cfg_.log.dir));
}

// Weights, optimizer and counters: a resume, a converted model (train.init_from), or Pythia's init.
void Run::init_state() {
  std::optional<CheckpointData> ckpt;
  std::string ckpt_source;  // a step directory, or a run directory (its newest whole checkpoint)
  const std::vector<std::string> existing = checkpoint_dirs(cfg_.checkpoint.dir);
  if (opt_.resume == "auto") {
    // Step directories but none whole is an error (load_checkpoint lists why), never a fresh
    // start that would prune them.
    if (!existing.empty()) ckpt_source = cfg_.checkpoint.dir;
    else log::info("--resume auto: no checkpoint in " + cfg_.checkpoint.dir + ", starting fresh");
  } else if (!opt_.resume.empty()) {
    ckpt_source = opt_.resume;
  } else if (!existing.empty() && ctx_->is_root()) {
    // Not an error (restarting on purpose is legitimate), but its checkpoints will be replaced
    // step by step and pruned by checkpoint.keep_last.
    log::warn("starting fresh although " + cfg_.checkpoint.dir + " holds checkpoints (newest " + existing.front() +
              "); use --resume auto to continue that run");
  }
  if (!ckpt_source.empty()) {
    ckpt = load_checkpoint(ckpt_source);
    const std::string ckpt_path = ckpt->dir;
    check_compatible(ckpt->config, cfg_, ckpt_path);
    check_resume_batch(*ckpt, global_batch_, cfg_.train.allow_batch_change);
    if (ckpt->state.step > cfg_.train.steps)
      throw ConfigError(ckpt_path + " is at step " + std::to_string(ckpt->state.step) + ", beyond train.steps = " +
                        std::to_string(cfg_.train.steps));
    // Full tensors by name, sliced to this rank's layout (any dp × tp, ZeRO-1 or not).
    ctx_->scatter_full(*model_, *adamw_, parallel::StateKind::master, ckpt->master);
    if (!ckpt->m.empty()) {
      ctx_->scatter_full(*model_, *adamw_, parallel::StateKind::adam_m, ckpt->m);
      ctx_->scatter_full(*model_, *adamw_, parallel::StateKind::adam_v, ckpt->v);
    }
    st_ = ckpt->state;
    adamw_->set_t(st_.adam_t);
    rng_.set_state(st_.rng_state);
    last_ckpt_step_ = st_.step;
    last_ckpt_path_ = ckpt_path;
    resumed_after_bad_steps_ = st_.consecutive_bad >= cfg_.train.max_bad_steps;
    log::info(log::cat("resumed from ", ckpt_path, " at step ", st_.step, " (", format_count(static_cast<double>(st_.tokens_seen)),
                       " tokens seen)"));
  } else {
    rng_.set_state(cfg_.train.seed ^ 0x6d6c6b762d747261ull);  // the trainer's own stream ("mlkv-tra")
    std::vector<float> master;  // full (tp = 1) layout on every rank
    if (!cfg_.train.init_from.empty()) {
      CheckpointData w = load_checkpoint_weights(cfg_.train.init_from);
      check_compatible(w.config, cfg_, cfg_.train.init_from);
      master = std::move(w.master);
      log::info("initialised from " + cfg_.train.init_from + " (fresh optimizer, step 0)");
      converted_start_ = true;
    } else {
      const ParamLayout full_layout(model_->spec());
      master.assign(static_cast<size_t>(full_layout.total()), 0.0f);
      init_pythia(master, full_layout, model_->spec(), cfg_.train.seed);
    }
    ctx_->scatter_full(*model_, *adamw_, parallel::StateKind::master, master);
  }
  start_step_ = st_.step;
}

bool Run::run_step() {
  const auto t0 = Clock::now();
  const int64_t T = cfg_.train.seq_len, B = cfg_.train.micro_batch;
  std::exception_ptr data_error;  // damaged data found mid-run: checkpoint, then report it
  try {
    train_src_->next(rows_);
  } catch (const DataError&) {
    data_error = std::current_exception();
    rows_.assign(static_cast<size_t>(B * cfg_.train.grad_accum * (T + 1)), 0);
  }
  const int64_t n_rows = static_cast<int64_t>(rows_.size()) / (T + 1);
  if (n_rows != B * cfg_.train.grad_accum)
    throw Error(log::cat("data source gave ", n_rows, " rows, expected ", B * cfg_.train.grad_accum));
  tokens_.resize(static_cast<size_t>(n_rows * T));
  targets_.resize(tokens_.size());
  split_rows(rows_.data(), n_rows, T, tokens_.data(), targets_.data());

  // dloss = 1 / (targets of the whole optimizer step on every rank): the gradient is then the one
  // of the global mean loss, whatever the accumulation and DP split.
  int64_t local_count = 0;
  for (int32_t t : targets_) local_count += t >= 0;
  // A rank whose data failed adds NaN, so every rank learns of it in the reduction it makes anyway.
  const double global_count = ctx_->all_reduce_sum(data_error ? NAN : static_cast<double>(local_count));
  if (std::isnan(global_count)) stop_on_data_error(data_error);
  const float dloss = global_count > 0 ? static_cast<float>(1.0 / global_count) : 0.0f;

  model_->zero_grads();
  double loss_sum = 0;
  for (int64_t mb = 0; mb < cfg_.train.grad_accum; ++mb) {
    ctx_->before_backward(*model_, mb == cfg_.train.grad_accum - 1);  // the last one overlaps the DP reduction
    const LossSum ls = model_->forward_backward(tokens_.data() + mb * B * T, targets_.data() + mb * B * T, dloss);
    loss_sum += ls.sum;
  }
  ctx_->reduce_gradients(*model_);
  const double loss = ctx_->all_reduce_sum(loss_sum) / std::max(1.0, global_count);
  const double lr = lr_at(cfg_.optim, st_.step, cfg_.train.steps);

  UpdateStats stats;
  if (std::isfinite(loss)) stats = ctx_->optimizer_step(*adamw_, *model_, lr);
  else stats.skipped = true;  // every rank sees the same all-reduced loss, so all skip together
  const bool bad = stats.skipped || !std::isfinite(loss);
  ++st_.step;
  st_.tokens_seen += static_cast<int64_t>(global_count);
  st_.adam_t = adamw_->t();
  result_.losses.push_back(bad ? NAN : loss);

  iv_.steps += 1;
  iv_.tokens += static_cast<int64_t>(global_count);
  iv_.last_lr = lr;
  iv_.last_gnorm = stats.grad_norm;
  if (bad) {
    ++iv_.bad;
    ++st_.consecutive_bad;
    const std::string what = std::isfinite(loss) ? log::cat("gradient norm (", stats.grad_norm, ")") : log::cat("loss (", loss, ")");
    log::warn(log::cat("step ", st_.step, ": non-finite ", what, ": update skipped (", st_.consecutive_bad,
                       " in a row, limit train.max_bad_steps = ", cfg_.train.max_bad_steps, ")"));
  } else {
    ++iv_.finite;
    iv_.loss_sum += loss;
    st_.consecutive_bad = 0;
  }
  backend_->synchronize();
  iv_.step_seconds += seconds_since(t0);
  return true;
}

void Run::log_interval(bool force) {
  if (iv_.steps == 0 || (!force && st_.step % cfg_.log.interval != 0)) return;
  if (metrics_) {
    const auto& topo = ctx_->topo();
    StepMetrics m;
    m.step = st_.step;
    m.total_steps = cfg_.train.steps;
    m.loss = iv_.finite ? iv_.loss_sum / static_cast<double>(iv_.finite) : NAN;
    m.lr = iv_.last_lr;
    m.grad_norm = iv_.last_gnorm;
    m.tokens_per_s = iv_.step_seconds > 0 ? static_cast<double>(iv_.tokens) / iv_.step_seconds : 0;
    m.peak_flops = cfg_.log.peak_flops;
    m.peak_label = format_peak(cfg_.log.peak_flops, backend_->act_bytes());
    m.mfu = m.tokens_per_s * flops_per_token_ / (cfg_.log.peak_flops * topo.world_size);
    const double dev_mem = static_cast<double>(backend_->peak_memory_bytes());
    m.mem_bytes = dev_mem > 0 ? dev_mem : peak_rss_bytes();
    m.eta_s = iv_.step_seconds / static_cast<double>(iv_.steps) * static_cast<double>(cfg_.train.steps - st_.step);
    m.tokens = st_.tokens_seen;
    m.bad_steps = iv_.bad;
    metrics_->log_step(m);
  }
  iv_ = Interval{};
}

bool Run::log_dir_failed() { return ctx_->any_rank_true(metrics_ && metrics_->failed()); }

void Run::stop_on_data_error(std::exception_ptr own_error) {
  // The steps done since the last checkpoint are kept; the checkpoint's sampler state is the
  // failed batch, so a resume after the data is repaired reads it again.
  log::error(log::cat("data error at step ", st_.step + 1, ": checkpointing the ", st_.step - last_ckpt_step_,
                      " steps done since the last checkpoint before stopping"));
  if (st_.step > start_step_) write_checkpoint("data error");
  if (own_error) std::rethrow_exception(own_error);
  throw DataError("stopped: another rank's training data failed (its log names the shard and offset)");
}

void Run::validate() {
  if (!val_src_) return;
  const EvalResult r = evaluate(*model_, *val_src_, cfg_.train.eval_batches, *ctx_);
  st_.last_val_loss = r.loss;
  result_.last_val_loss = r.loss;
  if (metrics_) metrics_->log_eval(EvalMetrics{st_.step, r.loss, r.ppl, r.tokens});
}

void Run::write_checkpoint(const char* why) {
  if (last_ckpt_step_ == st_.step && !last_ckpt_path_.empty()) return;  // this step is already saved
  CheckpointData d;
  d.config = cfg_;
  // Collective: every rank takes part, rank 0 receives the full tensors (empty elsewhere).
  d.master = ctx_->gather_full(*model_, *adamw_, parallel::StateKind::master);
  d.m = ctx_->gather_full(*model_, *adamw_, parallel::StateKind::adam_m);
  d.v = ctx_->gather_full(*model_, *adamw_, parallel::StateKind::adam_v);
  d.state = st_;
  d.state.rng_state = rng_.state();
  d.state.sampler = train_src_->state();
  d.state.dp = ctx_->topo().dp;
  d.state.tp = ctx_->topo().tp;
  d.state.global_batch = global_batch_;
  std::string path;
  on_root(*ctx_, [&] {
    const auto t0 = Clock::now();
    signals::CriticalSection no_signals;  // a second signal waits until the checkpoint is whole
    path = save_checkpoint(cfg_.checkpoint.dir, d, cfg_.checkpoint.keep_last);
    log::info(log::cat("checkpoint (", why, "): ", path, " in ", format_duration(seconds_since(t0))));
  });
  ctx_->barrier();
  last_ckpt_step_ = st_.step;
  last_ckpt_path_ = path.empty() ? cfg_.checkpoint.dir : path;
  result_.last_checkpoint = last_ckpt_path_;
}

TrainResult Run::finish(int exit_code) {
  if (metrics_) metrics_->flush();
  result_.exit_code = exit_code;
  result_.step = st_.step;
  result_.final_master = ctx_->gather_full(*model_, *adamw_, parallel::StateKind::master);
  return result_;
}

TrainResult Run::go() {
  setup();
  const int64_t total = cfg_.train.steps;
  if (st_.step >= total) {
    log::info(log::cat("already at step ", st_.step, " of ", total, ": nothing to do"));
    return finish(kExitOk);
  }
  if (resumed_after_bad_steps_) {
    // Another step from here is most likely bad too, and would cost one more checkpoint to
    // checkpoint.keep_last: stop before it.
    const std::vector<std::string> dirs = checkpoint_dirs(cfg_.checkpoint.dir);
    const auto earlier = std::find_if(dirs.begin(), dirs.end(), [&](const std::string& d) { return d != last_ckpt_path_; });
    log::error(log::cat(last_ckpt_path_, " was written after ", st_.consecutive_bad, " non-finite steps in a row ",
                        "(train.max_bad_steps = ", cfg_.train.max_bad_steps, "): not training on from it. Resume from an ",
                        "earlier checkpoint", earlier != dirs.end() ? " (--resume " + *earlier + ")" : std::string(),
                        ", lower optim.lr, or raise train.max_bad_steps."));
    return finish(kExitBadSteps);
  }
  run_t0_ = Clock::now();
  // The loss of a converted model before any uptraining is the baseline the run is judged by.
  if (converted_start_) validate();
  while (st_.step < total) {
    run_step();
    const bool last = st_.step == total;
    log_interval(last);
    if ((last || st_.step % cfg_.log.interval == 0) && log_dir_failed()) {
      write_checkpoint("log.dir failed");
      return finish(kExitFailure);
    }
    if (st_.consecutive_bad >= cfg_.train.max_bad_steps) {
      log::error(log::cat(st_.consecutive_bad, " non-finite steps in a row (train.max_bad_steps = ", cfg_.train.max_bad_steps,
                          "): stopping at step ", st_.step, ". Lower optim.lr, check the data, or resume from an "
                          "earlier checkpoint."));
      write_checkpoint("bad steps");
      return finish(kExitBadSteps);
    }
    if (!last && cfg_.train.eval_interval > 0 && st_.step % cfg_.train.eval_interval == 0) {
      validate();
      if (log_dir_failed()) {
        write_checkpoint("log.dir failed");
        return finish(kExitFailure);
      }
    }
    if (!last && cfg_.checkpoint.interval > 0 && st_.step % cfg_.checkpoint.interval == 0) write_checkpoint("interval");
    const int signo = signals::stop_requested();
    const bool stop_after = st_.step == opt_.stop_after_step;
    if (ctx_->any_rank_true(signo != 0 || stop_after)) {
      log_interval(true);
      // A rank may stop for another's reason: Open MPI forwards a signal to every rank, but one
      // can see it a step after another has.
      const char* why = signo ? signals::name(signo) : stop_after ? "stop_after_step" : "another rank's stop request";
      log::info(log::cat("stop requested (", why, "): checkpointing at step ", st_.step, " and exiting with code ",
                         int{kExitPreempted}));
      write_checkpoint("stop");
      return finish(kExitPreempted);
    }
  }
  validate();
  write_checkpoint("final");
  if (log_dir_failed()) return finish(kExitFailure);  // checkpoint kept; metrics.jsonl says where it stops
  if (ctx_->is_root()) {
    const double mean_last = result_.losses.empty() ? NAN : result_.losses.back();
    std::string summary = log::cat("done: ", st_.step, " steps in ", format_duration(seconds_since(run_t0_)), " | final loss ");
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.4f", mean_last);
    summary += buf;
    if (std::isfinite(st_.last_val_loss)) {
      std::snprintf(buf, sizeof buf, " | val loss %.4f (ppl %.2f)", st_.last_val_loss, std::exp(st_.last_val_loss));
      summary += buf;
    }
    summary += " | " + format_count(static_cast<double>(st_.tokens_seen)) + " tokens | checkpoint " + last_ckpt_path_;
    log::info(summary);
  }
  return finish(kExitOk);
}

}  // namespace

void split_rows(const int32_t* rows, int64_t n_rows, int64_t T, int32_t* tokens, int32_t* targets) {
  for (int64_t r = 0; r < n_rows; ++r) {
    const int32_t* row = rows + r * (T + 1);
    std::copy(row, row + T, tokens + r * T);
    std::copy(row + 1, row + T + 1, targets + r * T);
  }
}

std::unique_ptr<TokenSource> make_loader_source(const data::LoaderOptions& options) {
  return std::make_unique<LoaderSource>(options);
}

std::unique_ptr<TokenSource> make_config_source(const Config& cfg, const SourceSpec& spec) {
  data::LoaderOptions o;
  o.seq_len = spec.seq_len;
  o.global_batch = spec.global_batch;
  o.dp_rank = spec.dp_rank;
  o.dp_size = spec.dp_size;
  o.seed = cfg.train.seed;
  o.prefetch = cfg.data.prefetch;
  o.vocab_limit = cfg.model.vocab_size;
  o.verify = cfg.data.verify;
  if (!spec.validation) {
    if (cfg.data.path.empty()) throw ConfigError("data.path is required for training (a shard directory, file or glob)");
    o.path = cfg.data.path;
    o.shuffle = cfg.data.shuffle;
    o.val_fraction = cfg.data.val_path.empty() ? cfg.data.val_fraction : 0.0;
    return make_loader_source(o);
  }
  // Validation reads in file order and restarts at every pass: the same rows every time, and the
  // same rows `mlkv-eval --data <val_path>` reads.
  o.shuffle = false;
  o.prefetch = std::min(cfg.data.prefetch, 2);
  if (!cfg.data.val_path.empty()) {
    o.path = cfg.data.val_path;
  } else if (cfg.data.val_fraction > 0) {
    o.path = cfg.data.path;
    o.split = "val";
    o.val_fraction = cfg.data.val_fraction;
  } else {
    return nullptr;
  }
  return make_loader_source(o);
}

std::unique_ptr<TokenSource> make_repeating_source(int64_t vocab, int64_t period, uint64_t seed, const SourceSpec& spec) {
  return std::make_unique<RepeatingSource>(vocab, period, seed, spec);
}

EvalResult evaluate(Model& model, TokenSource& source, int64_t batches, parallel::Context& ctx) {
  const int64_t T = model.seq_len(), B = model.batch();
  std::vector<int32_t> rows, tokens, targets;
  double sum = 0, count = 0;
  source.reset();
  for (int64_t b = 0; b < batches; ++b) {
    source.next(rows);
    const int64_t n_rows = static_cast<int64_t>(rows.size()) / (T + 1);
    if (n_rows % B != 0) throw Error(log::cat("evaluate: ", n_rows, " rows per batch is not a multiple of ", B));
    tokens.resize(static_cast<size_t>(n_rows * T));
    targets.resize(tokens.size());
    split_rows(rows.data(), n_rows, T, tokens.data(), targets.data());
    for (int64_t r = 0; r < n_rows; r += B) {
      const LossSum ls = model.forward_loss(tokens.data() + r * T, targets.data() + r * T);
      sum += ls.sum;
      count += static_cast<double>(ls.count);
    }
  }
  sum = ctx.all_reduce_sum(sum);
  count = ctx.all_reduce_sum(count);
  EvalResult r;
  r.tokens = static_cast<int64_t>(count);
  r.loss = count > 0 ? sum / count : NAN;
  r.ppl = std::exp(r.loss);
  return r;
}

TrainResult train(const TrainerOptions& options) { return Run(options).go(); }

}  // namespace mlkv
