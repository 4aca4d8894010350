// CUDA vs CPU: casts, exact GELU forward/backward (and with the bias gradient), the residual add,
// AdamW and the reductions.
// Sizes include a tail that is not a multiple of 8 and an unaligned start (the scalar paths).
#include <cstdlib>
#include <utility>

#include "cuda_test_util.h"

namespace mlkv::test {
namespace {

using Elementwise = CudaVsCpu;

TEST_F(Elementwise, CastRoundTripIsExactForBf16Values) {
  const size_t n = 100003;
  const auto x = randn(n, 3.0f);
  Buf a = act_buf(*gpu, x);
  EXPECT_EQ(read_act(*gpu, a.p, n), x);
  // fp32 → bf16 rounds to nearest even, like the host rounding.
  std::vector<float> raw(n);
  std::normal_distribution<float> d(0, 1);
  for (auto& v : raw) v = d(rng);
  Buf r = act_buf(*gpu, raw);
  const auto back = read_act(*gpu, r.p, n);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(back[i], bf16_round(raw[i])) << i;
}

TEST_F(Elementwise, GeluForwardBackward) {
  for (size_t n : {size_t{1} << 20, size_t{4099}}) {
    for (int offset : {0, 1}) {  // offset 1 element: unaligned pointers take the scalar path
      const auto x = randn(n + offset, 2.0f), g = randn(n + offset);
      auto fwd = [&](Backend& b) {
        Buf in = act_buf(b, x), out(b, (n + offset) * b.act_bytes());
        poison_act(b, out.p, n + offset);
        const int ab = b.act_bytes();
        b.gelu_forward(out.as<char>() + offset * ab, in.as<char>() + offset * ab, n);
        auto r = read_act(b, out.p, n + offset);
        return std::vector<float>(r.begin() + offset, r.end());
      };
      auto bwd = [&](Backend& b) {
        Buf in = act_buf(b, x), dout = act_buf(b, g), din(b, (n + offset) * b.act_bytes());
        poison_act(b, din.p, n + offset);
        const int ab = b.act_bytes();
        b.gelu_backward(din.as<char>() + offset * ab, in.as<char>() + offset * ab, dout.as<char>() + offset * ab, n);
        auto r = read_act(b, din.p, n + offset);
        return std::vector<float>(r.begin() + offset, r.end());
      };
      EXPECT_LT(rel_err(fwd(*gpu), fwd(*cpu)), 1e-2) << "n=" << n << " offset=" << offset;
      EXPECT_LT(rel_err(bwd(*gpu), bwd(*cpu)), 1e-2) << "n=" << n << " offset=" << offset;
    }
  }
}

// The MLP's GELU backward with the up-projection's bias gradient summed in the same pass
// (MLKV_GELU_BGRAD=1, colsum.cu) against the two ops (gelu_backward, then the bias sum), bitwise,
// and both against the CPU reference. dbias accumulates onto what it held; din written in place
// over dout as the model does; C = 3072 takes the 8-wide path, C = 1001 the scalar one.
TEST_F(Elementwise, GeluBackwardWithBiasGradientIsTheTwoOpsBitwise) {
  ::setenv("MLKV_GELU_BGRAD", "1", 1);
  auto fused = make_cuda_backend(0);
  ::unsetenv("MLKV_GELU_BGRAD");
  for (const auto& [N, C] : {std::pair<int64_t, int>{300, 3072}, {257, 1001}, {1, 64}}) {
    const size_t n = size_t(N) * C;
    const auto x = randn(n, 2.0f), g = randn(n), b0 = randn(size_t(C));
    struct Out {
      std::vector<float> din, dbias;
    };
    auto run = [&](Backend& b) {
      Buf in = act_buf(b, x), grad = act_buf(b, g), dbias = f32_buf(b, b0);
      b.gelu_backward_bias(grad.p, dbias.f(), in.p, grad.p, N, C);
      return Out{read_act(b, grad.p, n), read_f32(b, dbias.p, size_t(C))};
    };
    const Out F = run(*fused), G = run(*gpu), R = run(*cpu);
    EXPECT_EQ(F.din, G.din) << N << " x " << C;
    EXPECT_EQ(F.dbias, G.dbias) << N << " x " << C;
    EXPECT_EQ(F.dbias, run(*fused).dbias) << "not deterministic";
    EXPECT_LT(rel_err(F.din, R.din), 1e-2) << N << " x " << C;
    EXPECT_LT(rel_err(F.dbias, R.dbias), 1e-2) << N << " x " << C;
  }
}

TEST_F(Elementwise, AddInplace) {
  const size_t n = 300007;
  const auto y = randn(n), x = randn(n);
  auto run = [&](Backend& b) {
    Buf yb = act_buf(b, y), xb = act_buf(b, x);
    b.add_inplace(yb.p, xb.p, n);
    return read_act(b, yb.p, n);
  };
  EXPECT_LT(rel_err(run(*gpu), run(*cpu)), 1e-2);
}

TEST_F(Elementwise, AdamwMatchesReferenceAndRefreshesBf16Copy) {
  const size_t n = 100003;
  const auto p0 = randn(n), g = randn(n, 0.01f), m0 = randn(n, 0.01f);
  auto v0 = randn(n, 1e-4f);
  for (auto& v : v0) v = v * v;
  AdamwStep st;
  st.lr = 3e-3f;
  st.weight_decay = 0.1f;
  st.t = 3;
  st.grad_scale = 0.5f;
  struct Out {
    std::vector<float> master, m, v, act;
  };
  auto run = [&](Backend& b) {
    Buf master = f32_buf(b, p0), grad = f32_buf(b, g), m = f32_buf(b, m0), v = f32_buf(b, v0);
    Buf act(b, n * b.act_bytes());
    poison_act(b, act.p, n);
    for (int step = 0; step < 2; ++step) {
      b.adamw_update(master.f(), act.p, grad.f(), m.f(), v.f(), n, st);
      ++st.t;
    }
    st.t -= 2;
    return Out{read_f32(b, master.p, n), read_f32(b, m.p, n), read_f32(b, v.p, n), read_act(b, act.p, n)};
  };
  const Out G = run(*gpu), C = run(*cpu);
  EXPECT_LT(rel_err(G.master, C.master), 1e-6);
  EXPECT_LT(rel_err(G.m, C.m), 1e-6);
  EXPECT_LT(rel_err(G.v, C.v), 1e-6);
  std::vector<float> rounded(n);
  for (size_t i = 0; i < n; ++i) rounded[i] = bf16_round(C.master[i]);
  EXPECT_LT(rel_err(G.act, rounded), 1e-3);
}

TEST_F(Elementwise, SumAndSumSquaresAreAccurateAndDeterministic) {
  for (size_t n : {size_t{1}, size_t{1000}, size_t{3000017}}) {
    const auto x = randn(n, 1.0f, 0.3f);
    Buf g = f32_buf(*gpu, x), c = f32_buf(*cpu, x);
    const double gs = gpu->sum_squares(g.f(), n), cs = cpu->sum_squares(c.f(), n);
    const double gsum = gpu->sum(g.f(), n), csum = cpu->sum(c.f(), n);
    EXPECT_NEAR(gs, cs, 1e-12 * std::abs(cs)) << n;
    EXPECT_NEAR(gsum, csum, 1e-10 * (std::abs(csum) + n)) << n;
    EXPECT_EQ(gs, gpu->sum_squares(g.f(), n));  // bitwise the same on a second call
    EXPECT_EQ(gsum, gpu->sum(g.f(), n));
  }
}

}  // namespace
}  // namespace mlkv::test
