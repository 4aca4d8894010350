// A minimal training loop over parallel::Context, the way the trainer drives it, for the
// equivalence tests and the GPU benchmark: deterministic global batches (a pure function of the
// step), each DP rank taking its contiguous slice, micro-batches with the overlap hook on the
// last one, the global-mean loss, and the schedule's learning rate.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/config.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/rng.h"
#include "parallel/context.h"

namespace mlkv::test {

struct LoopConfig {
  int global_batch = 4;  // sequences per optimizer step, over all DP ranks
  int micro_batch = 1;   // sequences per forward_backward
  int seq_len = 8;
  uint64_t data_seed = 5;
  int64_t total_steps = 100;  // for the learning-rate schedule
  bool pattern = false;       // learnable rows (arithmetic progressions) instead of uniform noise
};

struct StepLog {
  double loss = 0, grad_norm = 0;
  bool skipped = false;
};

// Sequence `row` of step `step`: seq_len + 1 token ids; one target per row is ignored (-1).
inline void make_row(const LoopConfig& lc, int64_t step, int row, int64_t vocab, int32_t* tokens, int32_t* targets) {
  Rng rng(lc.data_seed * 1000003ull + static_cast<uint64_t>(step) * 7919ull + static_cast<uint64_t>(row));
  std::vector<int32_t> seq(lc.seq_len + 1);
  if (lc.pattern) {  // x, x+k, x+2k, … mod 997: predictable from two tokens, so the loss falls fast
    const uint64_t x = rng.next_u64() % 997, k = 1 + rng.next_u64() % 7;
    for (size_t i = 0; i < seq.size(); ++i) seq[i] = static_cast<int32_t>((x + k * i) % 997 % vocab);
  } else {
    for (auto& t : seq) t = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(vocab));
  }
  for (int i = 0; i < lc.seq_len; ++i) {
    tokens[i] = seq[i];
    targets[i] = seq[i + 1];
  }
  targets[(row + step) % lc.seq_len] = -1;
}

// One optimizer step at `step` (0-based) on this rank's share of the global batch.
inline StepLog train_step(parallel::Context& ctx, Model& model, AdamW& opt, const Config& cfg, const LoopConfig& lc,
                          int64_t step) {
  const auto& topo = ctx.topo();
  const int per_rank = lc.global_batch / topo.dp, T = lc.seq_len, mb = lc.micro_batch;
  const int64_t V = model.spec().vocab;
  std::vector<int32_t> tokens(static_cast<size_t>(per_rank) * T), targets(tokens.size());
  for (int r = 0; r < per_rank; ++r)
    make_row(lc, step, topo.dp_rank * per_rank + r, V, tokens.data() + r * T, targets.data() + r * T);
  int64_t local_count = 0;
  for (int32_t t : targets) local_count += t >= 0;
  const double global_count = ctx.all_reduce_sum(static_cast<double>(local_count));
  const float dloss = static_cast<float>(1.0 / global_count);
  model.zero_grads();
  double loss_sum = 0;
  const int n_micro = per_rank / mb;
  for (int i = 0; i < n_micro; ++i) {
    ctx.before_backward(model, i == n_micro - 1);
    loss_sum += model.forward_backward(tokens.data() + i * mb * T, targets.data() + i * mb * T, dloss).sum;
  }
  ctx.reduce_gradients(model);
  StepLog log;
  log.loss = ctx.all_reduce_sum(loss_sum) / global_count;
  const UpdateStats st = ctx.optimizer_step(opt, model, lr_at(cfg.optim, step, lc.total_steps));
  log.grad_norm = st.grad_norm;
  log.skipped = st.skipped;
  return log;
}

}  // namespace mlkv::test
