// The fused LM head (Model::head_loss): computed chunk by chunk over rows, the loss, every
// parameter gradient and the eval logits must match the unfused path (all rows at once) on the
// CPU reference, within fp32 summation-order noise. Uneven chunks (the last one short, one of a
// single row) and ignored targets included.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/errors.h"
#include "core/model.h"
#include "test_util.h"

namespace mlkv {
namespace {

struct HeadRun {
  LossSum train, eval;
  std::vector<float> grads, logits;
  size_t activation_bytes;
};

HeadRun run_with_chunk(int64_t chunk_rows) {
  const ModelSpec spec = test::tiny_spec(3, 16, 2, 1, {0, 2}, 37);
  auto be = make_backend("cpu", 2);
  const int B = 3, T = 7;  // N = 21 rows
  Model model(spec, *be, B, T);
  model.set_head_chunk_rows(chunk_rows);
  model.set_master(test::random_params(model.layout(), 5));
  const auto tokens = test::random_tokens(B * T, spec.vocab, 17);
  auto targets = test::random_tokens(B * T, spec.vocab, 19);
  targets[4] = -100;
  targets[20] = -1;  // ignored rows, one in the last chunk
  HeadRun r;
  model.zero_grads();
  r.train = model.forward_backward(tokens.data(), targets.data(), 1.0f / 19);
  r.grads = model.get_grads();
  r.eval = model.forward_loss(tokens.data(), targets.data());
  r.logits = model.forward_logits(tokens.data());
  r.activation_bytes = model.activation_bytes();
  return r;
}

TEST(HeadChunk, MatchesTheUnfusedPath) {
  const HeadRun whole = run_with_chunk(0);
  ASSERT_EQ(whole.train.count, 19);
  for (int64_t rows : {1, 5, 20}) {
    const HeadRun chunked = run_with_chunk(rows);
    EXPECT_EQ(chunked.train.count, whole.train.count);
    EXPECT_NEAR(chunked.train.sum, whole.train.sum, 1e-6 * std::abs(whole.train.sum)) << rows << " rows";
    EXPECT_NEAR(chunked.eval.sum, whole.eval.sum, 1e-6 * std::abs(whole.eval.sum)) << rows << " rows";
    EXPECT_DOUBLE_EQ(chunked.eval.sum, chunked.train.sum) << "forward_loss and forward_backward disagree";
    ASSERT_EQ(chunked.logits.size(), whole.logits.size());
    EXPECT_EQ(chunked.logits, whole.logits) << rows << " rows: the head's forward GEMM is per row";
    ASSERT_EQ(chunked.grads.size(), whole.grads.size());
    double worst = 0, scale = 0;
    for (size_t i = 0; i < whole.grads.size(); ++i) {
      worst = std::max(worst, double(std::abs(chunked.grads[i] - whole.grads[i])));
      scale = std::max(scale, double(std::abs(whole.grads[i])));
    }
    ASSERT_GT(scale, 1e-3);
    EXPECT_LE(worst, 1e-6 * scale) << rows << " rows: largest gradient difference";
    // Only one chunk of logits is held: (21 − rows) · V fp32 values fewer.
    EXPECT_EQ(whole.activation_bytes - chunked.activation_bytes, size_t(21 - rows) * 37 * sizeof(float));
  }
}

TEST(HeadChunk, RejectsBadOrLateChunkSizes) {
  const ModelSpec spec = test::tiny_spec(2, 16, 2, 2, {0, 1}, 23);
  auto be = make_backend("cpu", 1);
  Model model(spec, *be, 1, 4);
  EXPECT_THROW(model.set_head_chunk_rows(-1), ConfigError);
  model.set_master(test::random_params(model.layout(), 3));
  const auto tokens = test::random_tokens(4, spec.vocab, 1);
  model.forward_loss(tokens.data(), tokens.data());
  EXPECT_THROW(model.set_head_chunk_rows(2), Error);
}

}  // namespace
}  // namespace mlkv
