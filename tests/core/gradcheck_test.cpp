// Finite-difference gradient checks of every parameter tensor on tiny models: MHA, GQA, MQA,
// MLKV with equal and uneven groups, MLKV-1, and the seed paper's un-rotated shared keys.
// Each tensor is probed along a random direction u: (L(θ+εu) − L(θ−εu)) / 2ε must equal ∇L·u.
#include <gtest/gtest.h>

#include <cmath>

#include "core/model.h"
#include "test_util.h"

namespace mlkv {
namespace {

struct GradCase {
  const char* name;
  int layers, d, heads, kv_heads;
  std::vector<int> owners;
  bool rope_shared_keys;
};

void PrintTo(const GradCase& c, std::ostream* os) { *os << c.name; }

class GradCheck : public ::testing::TestWithParam<GradCase> {};

TEST_P(GradCheck, EveryTensorMatchesFiniteDifferences) {
  const GradCase& c = GetParam();
  const ModelSpec spec = test::tiny_spec(c.layers, c.d, c.heads, c.kv_heads, c.owners, 23, c.rope_shared_keys);
  auto be = make_backend("cpu", 2);
  const int B = 2, T = 6;
  Model model(spec, *be, B, T);
  const ParamLayout& layout = model.layout();
  const std::vector<float> theta = test::random_params(layout, 7);
  const auto tokens = test::random_tokens(B * T, spec.vocab, 11);
  auto targets = test::random_tokens(B * T, spec.vocab, 13);
  targets[3] = -100;  // an ignored position must contribute nothing

  model.set_master(theta);
  model.zero_grads();
  const LossSum base = model.forward_backward(tokens.data(), targets.data(), 1.0f / (B * T - 1));
  ASSERT_EQ(base.count, B * T - 1);
  const std::vector<float> grad = model.get_grads();

  auto loss_at = [&](const std::vector<float>& p) {
    model.set_master(p);
    const LossSum ls = model.forward_loss(tokens.data(), targets.data());
    return ls.sum / ls.count;
  };
  Rng rng(99);
  for (const ParamView& v : layout.views()) {
    std::vector<double> u(v.numel);
    double gu = 0;
    for (int64_t i = 0; i < v.numel; ++i) {
      u[i] = rng.normal();
      gu += u[i] * grad[v.offset + i];
    }
    const double eps = 2e-3;
    std::vector<float> plus = theta, minus = theta;
    for (int64_t i = 0; i < v.numel; ++i) {
      plus[v.offset + i] += static_cast<float>(eps * u[i]);
      minus[v.offset + i] -= static_cast<float>(eps * u[i]);
    }
    const double fd = (loss_at(plus) - loss_at(minus)) / (2 * eps);
    EXPECT_NEAR(fd, gu, 2e-3 + 2e-2 * std::abs(gu)) << c.name << ": " << v.name;
    EXPECT_GT(std::abs(gu), 1e-6) << c.name << ": " << v.name << " has no gradient at all";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Plans, GradCheck,
    ::testing::Values(GradCase{"mha", 2, 16, 2, 2, {0, 1}, true},
                      GradCase{"gqa", 2, 32, 4, 2, {0, 1}, true},
                      GradCase{"mqa", 2, 32, 4, 1, {0, 1}, true},
                      GradCase{"mlkv_equal", 4, 16, 2, 2, {0, 2}, true},
                      GradCase{"mlkv_uneven", 5, 32, 4, 2, {0, 1, 3}, true},
                      GradCase{"mlkv1", 3, 32, 4, 1, {0}, true},
                      GradCase{"mlkv_compat", 3, 16, 2, 1, {0, 2}, false}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace mlkv
