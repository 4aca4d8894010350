// CPU (fp32 reference) decoding: for every KV plan in configs/ and both rope modes, the logits of
// every generated token equal the full forward's within 1e-5 relative, and the greedy tokens are
// the full forward's argmax. Each plan keeps its layers, heads, owners and kv_heads on a model of
// head dim 16 (8 above 12 heads), ffn 2·d and a 97-token vocabulary: ~0.3 s for all of them.
#include <gtest/gtest.h>

#include "core/errors.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/decode/decode_check.h"

namespace mlkv::test {
namespace {

class CpuDecodePlans : public ::testing::TestWithParam<std::tuple<std::string, bool>> {};

TEST_P(CpuDecodePlans, DecodeEqualsFullForward) {
  const auto& [config, shared] = GetParam();
  ModelSpec probe = load_config(std::string(MLKV_SOURCE_DIR) + "/" + config).spec();
  const ModelSpec spec = shrunk_plan(config, shared, probe.heads > 12 ? 8 : 16, 1 << 20, 2, 97);
  CpuBackend be(2);
  // batch of 3 prompts of different lengths; 5 and 17 force 1-sequence prefill chunks (16 rows)
  const DecodeErrors e = check_decode(spec, be, {5, 17, 2}, 6, 0.0);
  EXPECT_EQ(e.positions, 18);
  EXPECT_LE(e.worst_rel, 1e-5) << spec.kv.name(spec.heads);
  EXPECT_EQ(e.token_mismatches + e.near_tie_mismatches, 0);
}

INSTANTIATE_TEST_SUITE_P(AllConfigs, CpuDecodePlans,
                         ::testing::Combine(::testing::ValuesIn(plan_configs()), ::testing::Bool()),
                         plan_test_name);

// The decode path must differ from the full forward when the cache is wrong: a decoder whose
// reader layers read a different owner would not pass. Here: the paper mode's owner must rotate
// K on the fly; decoding with rope_shared_keys flipped gives different logits.
TEST(CpuDecode, RopeModeMatters) {
  const ModelSpec paper = tiny_spec(4, 32, 2, 1, {0, 2}, 61, false);
  ModelSpec shared = paper;
  shared.kv.rope_shared_keys = true;
  CpuBackend be(1);
  const std::vector<float> params = random_params(ParamLayout(paper), 3);
  DecoderSize size{1, 12};
  Decoder a(paper, be, params, size), b(shared, be, params, size);
  const std::vector<std::vector<int32_t>> prompt{random_tokens(6, 61, 9)};
  a.prefill(prompt);
  b.prefill(prompt);
  a.step({5});
  b.step({5});
  const auto la = a.logits(), lb = b.logits();
  double diff = 0;
  for (size_t i = 0; i < la.size(); ++i) diff = std::max(diff, double(std::abs(la[i] - lb[i])));
  EXPECT_GT(diff, 1e-3);
}

TEST(CpuDecode, CacheHoldsOnlyOwners) {
  const ModelSpec s = tiny_spec(6, 32, 4, 2, {0, 3}, 50, true);
  DecoderSize size{3, 20};
  const DecoderMemory m = decoder_memory(s, 4, size);
  EXPECT_EQ(m.cache, size_t{2} * 2 /*owners*/ * 2 /*kv_heads*/ * 8 /*hd*/ * 4 * 3 * 20);
  // the decoder allocates exactly what decoder_memory says (the fp32 upload temporary lives
  // between the weights and the rest)
  CpuBackend be(1);
  const std::vector<float> params = random_params(ParamLayout(s), 1);
  Decoder dec(s, be, params, size);
  EXPECT_EQ(be.peak_memory_bytes(), std::max(m.total(), m.weights + params.size() * sizeof(float)));
}

TEST(CpuDecode, EosStopsOneSequence) {
  const ModelSpec s = tiny_spec(2, 32, 2, 2, {0, 1}, 40, true);
  CpuBackend be(1);
  const std::vector<float> params = random_params(ParamLayout(s), 5);
  Decoder dec(s, be, params, DecoderSize{2, 30});
  const std::vector<std::vector<int32_t>> prompts{{1, 2, 3}, {4, 5}};
  SamplingOptions o;
  o.max_new_tokens = 8;
  const auto free_run = dec.generate(prompts, o);
  o.eos_id = free_run[0][2];  // the third token of sequence 0 becomes the stop token
  const auto stopped = dec.generate(prompts, o);
  const auto first = std::find(free_run[0].begin(), free_run[0].end(), o.eos_id) - free_run[0].begin();
  EXPECT_EQ(static_cast<int64_t>(stopped[0].size()), first + 1);
  EXPECT_EQ(stopped[0].back(), o.eos_id);
  for (int b = 0; b < 2; ++b)  // what was generated is the free run's prefix
    EXPECT_TRUE(std::equal(stopped[b].begin(), stopped[b].end(), free_run[b].begin()));
}

TEST(CpuDecode, BadInputsAreTypedErrors) {
  const ModelSpec s = tiny_spec(2, 32, 2, 2, {0, 1}, 40, true);
  CpuBackend be(1);
  const std::vector<float> params = random_params(ParamLayout(s), 5);
  Decoder dec(s, be, params, DecoderSize{2, 10});
  SamplingOptions o;
  o.max_new_tokens = 8;
  EXPECT_THROW(dec.generate({{1, 2, 3, 4}}, o), ConfigError);         // 4 + 8 - 1 > 10
  EXPECT_THROW(dec.prefill({{1, 40}}), DataError);                    // id outside the vocabulary
  EXPECT_THROW(dec.prefill({{1}, {2}, {3}}), ConfigError);            // more prompts than max_batch
  EXPECT_THROW(dec.prefill({{}}), DataError);                         // empty prompt
  o.top_p = 0;
  EXPECT_THROW(o.validate(), ConfigError);
  EXPECT_THROW(Decoder(s, be, std::vector<float>(3), DecoderSize{1, 8}), CheckpointError);
  EXPECT_THROW(Decoder(s, be, params, DecoderSize{1, 65}), ConfigError);  // beyond max_seq_len 64
}

}  // namespace
}  // namespace mlkv::test
