// CUDA vs CPU: LayerNorm forward/backward (din, dw, db accumulate) and the token embedding,
// whose backward must also be bitwise deterministic (no float atomics).
#include "cuda_test_util.h"

namespace mlkv::test {
namespace {

using NormEmbed = CudaVsCpu;

TEST_F(NormEmbed, LayerNormForward) {
  for (auto [N, C] : {std::pair<int64_t, int>{777, 768}, {64, 2048}, {50, 100}, {9, 5120}}) {
    const auto x = randn(N * C, 2.0f, 0.5f), w = randn(C, 0.3f, 1.0f), bias = randn(C, 0.1f);
    struct Out {
      std::vector<float> out, mean, rstd;
    };
    auto run = [&](Backend& b) {
      Buf in = act_buf(b, x), wb = act_buf(b, w), bb = act_buf(b, bias), out(b, N * C * b.act_bytes());
      Buf mean(b, N * 4), rstd(b, N * 4);
      poison_act(b, out.p, N * C);
      poison_f32(b, mean.p, N);
      poison_f32(b, rstd.p, N);
      b.layernorm_forward(out.p, mean.f(), rstd.f(), in.p, wb.p, bb.p, N, C, 1e-5f);
      return Out{read_act(b, out.p, N * C), read_f32(b, mean.p, N), read_f32(b, rstd.p, N)};
    };
    const Out G = run(*gpu), Cr = run(*cpu);
    EXPECT_LT(rel_err(G.out, Cr.out), 1e-2) << N << "x" << C;
    EXPECT_LT(rel_err(G.mean, Cr.mean), 1e-5) << N << "x" << C;
    EXPECT_LT(rel_err(G.rstd, Cr.rstd), 1e-5) << N << "x" << C;
  }
}

TEST_F(NormEmbed, LayerNormBackward) {
  // 777 rows: a partial last block of the fused kernel; C 100: the unfused path (C % 8 ≠ 0).
  for (auto [N, C] : {std::pair<int64_t, int>{777, 768}, {300, 2048}, {40, 5120}, {50, 100}}) {
    const auto x = randn(N * C, 2.0f, 0.5f), w = randn(C, 0.3f, 1.0f), dy = randn(N * C);
    const auto din0 = randn(N * C), dw0 = randn(C), db0 = randn(C);
    // The saved statistics, computed once here, so both backends read the same values.
    std::vector<float> mean(N), rstd(N);
    for (int64_t n = 0; n < N; ++n) {
      double m = 0, v = 0;
      for (int c = 0; c < C; ++c) m += x[n * C + c];
      m /= C;
      for (int c = 0; c < C; ++c) v += (x[n * C + c] - m) * (x[n * C + c] - m);
      mean[n] = float(m);
      rstd[n] = float(1.0 / std::sqrt(v / C + 1e-5));
    }
    struct Out {
      std::vector<float> din, dw, db;
    };
    auto run = [&](Backend& b) {
      Buf in = act_buf(b, x), wb = act_buf(b, w), dout = act_buf(b, dy), din = act_buf(b, din0);
      Buf dw = f32_buf(b, dw0), db = f32_buf(b, db0), mb = f32_buf(b, mean), rb = f32_buf(b, rstd);
      b.layernorm_backward(din.p, dw.f(), db.f(), dout.p, in.p, wb.p, mb.f(), rb.f(), N, C);
      return Out{read_act(b, din.p, N * C), read_f32(b, dw.p, C), read_f32(b, db.p, C)};
    };
    const Out G = run(*gpu), Cr = run(*cpu);
    EXPECT_LT(rel_err(G.din, Cr.din), 1e-2) << N << "x" << C;
    EXPECT_LT(rel_err(G.dw, Cr.dw), 1e-4) << N << "x" << C;
    EXPECT_LT(rel_err(G.db, Cr.db), 1e-5) << N << "x" << C;
  }
}

TEST_F(NormEmbed, EmbeddingForwardIsAnExactGather) {
  const int64_t N = 4099, V = 1000;
  for (int d : {768, 100}) {
    const auto wte = randn(V * d);
    const auto tok = randint(N, 0, V);
    auto run = [&](Backend& b) {
      Buf w = act_buf(b, wte), t = raw_buf(b, tok), out(b, N * d * b.act_bytes());
      poison_act(b, out.p, N * d);
      b.embedding_forward(out.p, t.as<int32_t>(), w.p, N, d);
      return read_act(b, out.p, N * d);
    };
    EXPECT_EQ(run(*gpu), run(*cpu)) << "d=" << d;
  }
}

TEST_F(NormEmbed, EmbeddingBackwardAccumulatesDeterministically) {
  const int64_t V = 50304;
  // Sizes around the 64-entry chunks of the sorted order: many chunks, a partial last one, one.
  for (auto [N, d] : {std::pair<int64_t, int>{8192, 768}, {1000, 72}, {37, 768}}) {
    // A skewed token mix: one token takes ~30% of positions (runs far longer than a warp),
    // the rest spread over a small and a large range, so rows see 0, 1, few and many hits.
    auto tok = randint(N, 0, V);
    std::uniform_real_distribution<float> u(0, 1);
    for (auto& t : tok) {
      const float r = u(rng);
      if (r < 0.3f) t = 0;
      else if (r < 0.6f) t = static_cast<int32_t>(t % 50);
    }
    const auto dy = randn(N * d), dw0 = randn(V * d, 0.1f);
    auto run = [&](Backend& b) {
      Buf t = raw_buf(b, tok), dout = act_buf(b, dy), dw = f32_buf(b, dw0);
      b.embedding_backward(dw.f(), dout.p, t.as<int32_t>(), N, d, V);
      return read_f32(b, dw.p, V * d);
    };
    const auto G = run(*gpu);
    EXPECT_LT(rel_err(G, run(*cpu)), 1e-6) << "N=" << N << " d=" << d;
    EXPECT_EQ(G, run(*gpu)) << "second run differs bitwise, N=" << N << " d=" << d;
  }
}

}  // namespace
}  // namespace mlkv::test
