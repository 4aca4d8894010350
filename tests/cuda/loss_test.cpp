// CUDA vs CPU: fused softmax cross-entropy over the padded vocabulary, with ignored targets,
// the in-place gradient, and compute_grad = false leaving the logits untouched.
#include "cuda_test_util.h"

namespace mlkv::test {
namespace {

using Loss = CudaVsCpu;

TEST_F(Loss, CrossEntropyLossAndGradient) {
  // V 50304: the row cached in shared memory; 65536: too big for that, read twice; 1003: scalar.
  for (auto [N, V] : {std::pair<int64_t, int64_t>{96, 50304}, {5, 65536}, {17, 1003}}) {
    const auto logits = randn(N * V, 3.0f);
    auto targets = randint(N, 0, static_cast<int32_t>(V));
    targets[1] = -1;
    targets[N - 1] = -100;
    targets[2] = static_cast<int32_t>(V - 1);
    const float dloss = 1.0f / N;
    struct Out {
      std::vector<float> loss, grad;
    };
    auto run = [&](Backend& b, bool grad) {
      Buf lg = act_buf(b, logits), t = raw_buf(b, targets), loss(b, N * 4);
      poison_f32(b, loss.p, N);
      b.cross_entropy(loss.f(), lg.p, t.as<int32_t>(), N, V, dloss, grad);
      return Out{read_f32(b, loss.p, N), read_act(b, lg.p, N * V)};
    };
    const Out G = run(*gpu, true), C = run(*cpu, true);
    EXPECT_LT(rel_err(G.loss, C.loss), 1e-5) << "V=" << V;
    EXPECT_EQ(G.loss[1], 0.0f);
    EXPECT_LT(rel_err(G.grad, C.grad), 1e-2) << "V=" << V;
    for (int64_t j = 0; j < V; ++j) ASSERT_EQ(G.grad[1 * V + j], 0.0f) << "ignored row has a gradient";
    // Each gradient row sums to zero (softmax minus one-hot).
    double rowsum = 0;
    for (int64_t j = 0; j < V; ++j) rowsum += G.grad[3 * V + j];
    EXPECT_NEAR(rowsum, 0.0, 5e-3 * dloss);  // the −dloss entry is itself rounded to bf16

    const Out F = run(*gpu, false);
    EXPECT_LT(rel_err(F.loss, C.loss), 1e-5);
    EXPECT_EQ(F.grad, logits) << "compute_grad = false must leave the logits alone";
  }
}

}  // namespace
}  // namespace mlkv::test
