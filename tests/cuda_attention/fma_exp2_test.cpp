// fma_exp2 (kernels/cuda/fma_exp2.cuh), the FMA-pipe 2^x that MLKV_ATTN_FWD_POLY puts into the
// hd-64 forward's softmax, checked on the host, where CI runs it: the same float operations as
// the device build. The GPU test PolynomialExp2ForwardMatchesReference checks the kernels with it.
#include "kernels/cuda/fma_exp2.cuh"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

namespace {

using mlkv::cuda::attn::fma_exp2;

double rel_err(float x) {
  const double ref = std::exp2(double(x));
  return std::abs(double(fma_exp2(x)) / ref - 1.0);
}

// Relative error within the fit's 7.5e-5 everywhere a softmax argument can land above the flush:
// every float step of a fine grid over [-126, 0] and random points, both ends included.
TEST(FmaExp2, RelativeErrorWithinTheFit) {
  double worst = 0;
  float at = 0;
  for (int i = 0; i <= 1260000; ++i) {
    const float x = -126.f + 1e-4f * float(i);
    if (x > 0.f) break;
    if (const double e = rel_err(x); e > worst) worst = e, at = x;
  }
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-126.f, 0.f);
  for (int i = 0; i < 200000; ++i)
    if (const float x = u(rng); rel_err(x) > worst) worst = rel_err(x), at = x;
  for (float x : {0.f, -0.5f, -1.f, -1.5f, -126.f})
    if (rel_err(x) > worst) worst = rel_err(x), at = x;
  EXPECT_LE(worst, 7.6e-5) << "at x = " << at;
  EXPECT_GT(worst, 1e-6) << "a cubic cannot be this close: the polynomial is not the one evaluated";
}

// Whole powers of two come out as 2^j times p(0), the same relative error at every j (the
// exponent trick adds j exactly).
TEST(FmaExp2, IntegersScaleExactly) {
  const float p0 = fma_exp2(0.f);
  for (int j = -126; j <= 0; ++j) EXPECT_EQ(fma_exp2(float(j)), std::ldexp(p0, j)) << "j = " << j;
}

// A masked key's -inf, and everything at or below -126.5, give exactly 0 (the special-function
// unit flushes what is below 2^-126); just above, the smallest normal range.
TEST(FmaExp2, FlushesBelowTheNormalRange) {
  for (float x : {-std::numeric_limits<float>::infinity(), -1e30f, -1000.f, -127.f, -126.5f})
    EXPECT_EQ(fma_exp2(x), 0.f) << "x = " << x;
  EXPECT_GT(fma_exp2(-126.4f), 0.f);
  EXPECT_LE(rel_err(-126.f), 7.6e-5);
}

}  // namespace
