// Helpers shared by the core tests: tiny model specs and random parameters.
#pragma once
#include <vector>

#include "core/model_spec.h"
#include "core/param_layout.h"
#include "core/rng.h"

namespace mlkv::test {

inline ModelSpec tiny_spec(int layers, int d, int heads, int kv_heads, std::vector<int> owners, int64_t vocab,
                           bool rope_shared_keys = true) {
  ModelSpec s;
  s.layers = layers;
  s.d_model = d;
  s.heads = heads;
  s.vocab = vocab;
  s.max_seq_len = 64;
  s.ffn = 4 * d;
  s.kv = KvPlan::from_owners(layers, owners, kv_heads);
  s.kv.rope_shared_keys = rope_shared_keys;
  s.validate("test");
  return s;
}

// Weights ~N(0, std), LayerNorm weights ~1 + N(0, std), biases ~N(0, std): nothing trivially 0 or 1.
inline std::vector<float> random_params(const ParamLayout& layout, uint64_t seed, double std = 0.3) {
  std::vector<float> p(layout.total(), 0.0f);
  Rng rng(seed);
  for (const ParamView& v : layout.views()) {
    const bool ln_w = v.name.find("ln") != std::string::npos && v.name.ends_with(".weight");
    for (int64_t i = 0; i < v.numel; ++i) p[v.offset + i] = static_cast<float>((ln_w ? 1.0 : 0.0) + std * rng.normal());
  }
  return p;
}

inline std::vector<int32_t> random_tokens(size_t n, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(vocab));
  return t;
}

}  // namespace mlkv::test
