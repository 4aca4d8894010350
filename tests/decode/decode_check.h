// The decode exactness check shared by the CPU and CUDA tests: generate greedily from a batch of
// prompts of different lengths, then run Model::forward_logits over each sequence's own tokens
// and compare, at every generated position, the logits and the chosen token.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/decode.h"
#include "core/model.h"
#include "core/param_layout.h"
#include "tests/core/test_util.h"

namespace mlkv::test {

// Every KV plan the project ships: configs/*.toml and configs/tiny/*.toml.
inline std::vector<std::string> plan_configs() {
  std::vector<std::string> out;
  for (const char* dir : {"configs", "configs/tiny"})
    for (const auto& e : std::filesystem::directory_iterator(std::string(MLKV_SOURCE_DIR) + "/" + dir))
      if (e.path().extension() == ".toml") out.push_back(std::string(dir) + "/" + e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// A config's KV plan (layers, heads, owners, kv_heads) with rope mode `shared`, on a model shrunk
// to head dim hd (heads capped at max_heads, which keeps the plan valid: kv_heads divides the
// heads the tests keep), ffn ffn_mult·d, vocabulary `vocab`.
inline ModelSpec shrunk_plan(const std::string& config, bool shared, int hd, int max_heads, int ffn_mult,
                             int64_t vocab) {
  ModelSpec s = load_config(std::string(MLKV_SOURCE_DIR) + "/" + config).spec();
  if (s.heads > max_heads && max_heads % s.kv.kv_heads == 0) s.heads = max_heads;
  s.d_model = s.heads * hd;
  s.ffn = ffn_mult * s.d_model;
  s.vocab = vocab;
  s.max_seq_len = 64;
  s.kv.rope_shared_keys = shared;
  s.validate(config);
  return s;
}

// Test names of the (config, rope_shared_keys) parameter pairs.
inline std::string plan_test_name(const ::testing::TestParamInfo<std::tuple<std::string, bool>>& info) {
  std::string n = std::get<0>(info.param);
  for (char& c : n)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return n + (std::get<1>(info.param) ? "_shared_rope" : "_paper_rope");
}

struct DecodeErrors {
  double worst_rel = 0;   // max over positions of ‖decode − full‖∞ / ‖full‖∞
  int positions = 0, token_mismatches = 0, near_tie_mismatches = 0;
};

// Greedy decoding on `be` vs the full forward on the same backend. A token mismatch counts as a
// near tie (allowed for bf16) when the full forward's top two logits are within tie_margin.
// param_std: the CPU check uses large random weights (exact arithmetic, every path exercised);
// bf16 checks need a trained-like scale (Pythia's init is 0.02): with std 0.3 the attention
// scores reach hundreds, softmax is one-hot and bf16 rounding alone flips which key wins.
inline DecodeErrors check_decode(const ModelSpec& spec, Backend& be, const std::vector<int>& prompt_lens, int new_tokens,
                                 double tie_margin, double param_std = 0.3) {
  const ParamLayout layout(spec);
  const std::vector<float> params = random_params(layout, 17, param_std);
  std::vector<std::vector<int32_t>> prompts;
  for (size_t b = 0; b < prompt_lens.size(); ++b)
    prompts.push_back(random_tokens(prompt_lens[b], spec.vocab, 100 + b));
  DecoderSize size;
  size.max_batch = static_cast<int>(prompts.size());
  size.max_ctx = *std::max_element(prompt_lens.begin(), prompt_lens.end()) + new_tokens;
  size.prefill_tokens = 16;  // several prefill chunks, and one that holds a single long prompt
  size.head_rows = 2;        // several LM-head chunks
  Decoder dec(spec, be, params, size);
  SamplingOptions o;
  o.max_new_tokens = new_tokens;
  std::vector<std::vector<float>> steps;
  const auto gen = dec.generate(prompts, o, [&](const std::vector<float>& l) { steps.push_back(l); });

  DecodeErrors err;
  const int64_t V = spec.vocab;
  for (size_t b = 0; b < prompts.size(); ++b) {
    EXPECT_EQ(static_cast<int>(gen[b].size()), new_tokens);
    std::vector<int32_t> seq = prompts[b];
    seq.insert(seq.end(), gen[b].begin(), gen[b].end() - 1);  // the last token is never fed back
    Model model(spec, be, 1, static_cast<int>(seq.size()));
    model.set_master(params);
    const std::vector<float> full = model.forward_logits(seq.data());
    for (int i = 0; i < new_tokens; ++i) {
      const float* ref = full.data() + (prompts[b].size() - 1 + i) * V;
      const float* got = steps[i].data() + b * V;
      double diff = 0, norm = 0;
      for (int64_t j = 0; j < V; ++j) {
        diff = std::max(diff, std::abs(double(got[j]) - ref[j]));
        norm = std::max(norm, std::abs(double(ref[j])));
      }
      err.worst_rel = std::max(err.worst_rel, diff / norm);
      ++err.positions;
      const int64_t best = std::max_element(ref, ref + V) - ref;
      if (gen[b][i] != best) {
        std::vector<float> sorted(ref, ref + V);
        std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
        (sorted[0] - sorted[1] <= tie_margin ? err.near_tie_mismatches : err.token_mismatches)++;
      }
    }
  }
  return err;
}

}  // namespace mlkv::test
