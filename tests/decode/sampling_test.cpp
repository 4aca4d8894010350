// sample_token: greedy, temperature, top-k and top-p, seeded.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "core/decode.h"

namespace mlkv {
namespace {

const std::vector<float> kLogits{0.5f, 2.0f, 1.0f, 2.0f, -1.0f, 0.0f};

TEST(Sampling, GreedyTakesTheFirstMaximum) {
  Rng rng(1);
  SamplingOptions o;
  EXPECT_EQ(sample_token(kLogits.data(), 6, o, rng), 1);
  o.temperature = 5;
  o.top_k = 1;
  EXPECT_EQ(sample_token(kLogits.data(), 6, o, rng), 1);
}

TEST(Sampling, TemperatureFollowsTheSoftmax) {
  SamplingOptions o;
  o.temperature = 2;
  Rng rng(7);
  std::vector<int> count(6);
  const int n = 60000;
  for (int i = 0; i < n; ++i) count[sample_token(kLogits.data(), 6, o, rng)]++;
  double z = 0;
  for (float x : kLogits) z += std::exp(x / 2);
  for (int j = 0; j < 6; ++j) {
    const double p = std::exp(kLogits[j] / 2) / z;
    EXPECT_NEAR(count[j] / double(n), p, 4 * std::sqrt(p * (1 - p) / n) + 1e-3) << j;
  }
}

TEST(Sampling, TopKAndTopPCutTheTail) {
  SamplingOptions o;
  o.temperature = 1;
  o.top_k = 3;  // ids 1, 3 (tied 2.0) and 2
  Rng rng(3);
  std::map<int, int> seen;
  for (int i = 0; i < 3000; ++i) seen[sample_token(kLogits.data(), 6, o, rng)]++;
  EXPECT_EQ(seen.size(), 3u);
  EXPECT_TRUE(seen.count(1) && seen.count(3) && seen.count(2));
  o.top_k = 0;
  o.top_p = 0.5f;  // ids 1 and 3 hold 0.29 each: the two of them reach 0.5
  seen.clear();
  for (int i = 0; i < 3000; ++i) seen[sample_token(kLogits.data(), 6, o, rng)]++;
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen.count(1) && seen.count(3));
  o.top_p = 1e-6f;  // only the most likely (the lower index among ties)
  EXPECT_EQ(sample_token(kLogits.data(), 6, o, rng), 1);
}

TEST(Sampling, SeededAndReproducible) {
  SamplingOptions o;
  o.temperature = 1;
  std::vector<int> a, b, c;
  Rng r1(42), r2(42), r3(43);
  for (int i = 0; i < 64; ++i) {
    a.push_back(sample_token(kLogits.data(), 6, o, r1));
    b.push_back(sample_token(kLogits.data(), 6, o, r2));
    c.push_back(sample_token(kLogits.data(), 6, o, r3));
  }
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

}  // namespace
}  // namespace mlkv
