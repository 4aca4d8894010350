// The training loop (issue 4): config → backend → parallel context → model (Pythia init, a
// converted checkpoint via train.init_from, or a resume) → data → steps with gradient accumulation,
// warmup + cosine schedule and clipping → periodic validation and checkpoints → a final one.
//
// One optimizer step on each rank:
//   rows   = this rank's micro_batch·grad_accum rows of the next global batch (seq_len + 1 tokens)
//   dloss  = 1 / (targets of the whole step on all ranks)         computed before the micro-steps
//   for each micro-batch: model.forward_backward(rows[:, :T], rows[:, 1:], dloss)
//   ctx.reduce_gradients(model); stats = ctx.optimizer_step(adamw, model, lr_at(step))
// so the gradient is that of the mean loss over the global batch, whatever dp and grad_accum are.
// The model, its optimizer (ZeRO-1 shards) and every cross-rank step come from parallel::Context;
// checkpoints hold full tensors by name, gathered from / scattered to any dp × tp layout.
// A non-finite loss or gradient norm skips the update; train.max_bad_steps in a row stop the run
// (checkpoint, kExitBadSteps). SIGTERM/SIGUSR1/SIGINT finish the step, checkpoint, kExitPreempted.
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "data/loader.h"

namespace mlkv {
class Model;
class AdamW;
namespace parallel {
class Context;
}

// Where rows of tokens come from: the HDF5 loader, or an in-memory stream in tests.
class TokenSource {
 public:
  virtual ~TokenSource() = default;
  // This rank's rows of the next global batch, each seq_len + 1 tokens, row-major.
  virtual void next(std::vector<int32_t>& rows) = 0;
  virtual data::SamplerState state() const = 0;  // of the batch next() returns next
  virtual void restore(const data::SamplerState& state) = 0;
  void reset() { restore(data::SamplerState{}); }
};

struct SourceSpec {
  int64_t seq_len = 0;
  int64_t global_batch = 0;  // sequences per optimizer step, all ranks
  int dp_rank = 0, dp_size = 1;
  bool validation = false;
};
using SourceFactory = std::function<std::unique_ptr<TokenSource>(const SourceSpec&)>;

// A data::Loader behind the TokenSource interface.
std::unique_ptr<TokenSource> make_loader_source(const data::LoaderOptions& options);
// The loaders a config asks for: training rows from data.path (minus data.val_fraction), or
// validation rows from data.val_path (all of it, unshuffled) or the held-out fraction of
// data.path. nullptr for validation when the config names no held-out data.
std::unique_ptr<TokenSource> make_config_source(const Config& cfg, const SourceSpec& spec);
// A learnable stream for tests and smoke runs: `period` distinct token ids (drawn from `seed`)
// repeated forever; sample k is the window of seq_len + 1 tokens starting at k·seq_len. Once the
// model knows the cycle every next token is determined, so the loss can fall towards 0.
std::unique_ptr<TokenSource> make_repeating_source(int64_t vocab, int64_t period, uint64_t seed, const SourceSpec& spec);

struct TrainerOptions {
  Config config;
  std::string resume;        // "" (fresh), "auto" (newest complete checkpoint, else fresh) or a path
  SourceFactory make_source;  // empty: make_config_source
  // Test hook: after this step, checkpoint and return kExitPreempted as a stop signal would.
  int64_t stop_after_step = -1;
  bool install_signal_handlers = true;
};

struct TrainResult {
  int exit_code = 0;                // kExitOk, kExitPreempted or kExitBadSteps
  int64_t step = 0;                 // completed steps
  std::vector<double> losses;       // of each step this call ran (NaN for skipped steps)
  double last_val_loss = NAN;
  std::string last_checkpoint;      // path, or empty
  std::vector<float> final_master;  // fp32 master weights at the end, full layout (rank 0 only)
};

// Runs the whole job. Throws Error subclasses (with their exit codes) for bad input or I/O.
TrainResult train(const TrainerOptions& options);

struct EvalResult {
  double loss = NAN;  // mean over every non-ignored target
  double ppl = NAN;   // exp(loss)
  int64_t tokens = 0;
};

// Mean loss over `batches` global batches of `source`, from its start (the source is reset), in
// micro-batches of model.batch() rows; sums are all-reduced so every rank gets the same result.
// mlkv-eval calls the same function, which is why it reproduces the trainer's validation loss.
EvalResult evaluate(Model& model, TokenSource& source, int64_t batches, parallel::Context& ctx);

// Splits rows of seq_len + 1 tokens into inputs rows[:, :T] and targets rows[:, 1:].
void split_rows(const int32_t* rows, int64_t n_rows, int64_t seq_len, int32_t* tokens, int32_t* targets);

}  // namespace mlkv
