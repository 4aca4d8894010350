// CUDA vs CPU: LayerNorm forward/backward (din, dw, db accumulate) and the token embedding,
// whose backward must also be bitwise deterministic (no float atomics).
#include "cuda_test_util.h"

namespace mlkv::test {
namespace {

using NormEmbed = CudaVsCpu;

// Per-row mean and 1/sqrt(var + 1e-5) of x[N, C], in double.
std::pair<std::vector<float>, std::vector<float>> row_stats(const std::vector<float>& x, int64_t N, int C) {
  std::vector<float> mean(N), rstd(N);
  for (int64_t n = 0; n < N; ++n) {
    double m = 0, v = 0;
    for (int c = 0; c < C; ++c) m += x[n * C + c];
    m /= C;
    for (int c = 0; c < C; ++c) v += (x[n * C + c] - m) * (x[n * C + c] - m);
    mean[n] = float(m);
    rstd[n] = float(1.0 / std::sqrt(v / C + 1e-5));
  }
  return {mean, rstd};
}

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
    const auto [mean, rstd] = row_stats(x, N, C);
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

// The fused pair (C % 8 == 0, C ≤ 4096) against the CPU reference's two single LayerNorms; 5120
// and 100 take the unfused fallback. The pair's outputs must also equal two single CUDA LayerNorms
// bit for bit (the same arithmetic per element).
TEST_F(NormEmbed, LayerNormPairForward) {
  for (auto [N, C] : {std::pair<int64_t, int>{777, 768}, {64, 2048}, {33, 4096}, {9, 5120}, {50, 100}}) {
    const auto x = randn(N * C, 2.0f, 0.5f), w1 = randn(C, 0.3f, 1.0f), b1 = randn(C, 0.1f);
    const auto w2 = randn(C, 0.3f, 1.0f), b2 = randn(C, 0.1f);
    struct Out {
      std::vector<float> out1, out2, mean, rstd;
    };
    auto run = [&](Backend& b, bool pair) {
      Buf in = act_buf(b, x), w1b = act_buf(b, w1), b1b = act_buf(b, b1), w2b = act_buf(b, w2), b2b = act_buf(b, b2);
      Buf o1(b, N * C * b.act_bytes()), o2(b, N * C * b.act_bytes()), mean(b, N * 4), rstd(b, N * 4);
      poison_act(b, o1.p, N * C);
      poison_act(b, o2.p, N * C);
      poison_f32(b, mean.p, N);
      poison_f32(b, rstd.p, N);
      if (pair) {
        b.layernorm_pair_forward(o1.p, o2.p, mean.f(), rstd.f(), in.p, w1b.p, b1b.p, w2b.p, b2b.p, N, C, 1e-5f);
      } else {
        b.layernorm_forward(o1.p, mean.f(), rstd.f(), in.p, w1b.p, b1b.p, N, C, 1e-5f);
        b.layernorm_forward(o2.p, mean.f(), rstd.f(), in.p, w2b.p, b2b.p, N, C, 1e-5f);
      }
      return Out{read_act(b, o1.p, N * C), read_act(b, o2.p, N * C), read_f32(b, mean.p, N), read_f32(b, rstd.p, N)};
    };
    const Out G = run(*gpu, true), Gs = run(*gpu, false), Cr = run(*cpu, true);
    EXPECT_LT(rel_err(G.out1, Cr.out1), 1e-2) << N << "x" << C;
    EXPECT_LT(rel_err(G.out2, Cr.out2), 1e-2) << N << "x" << C;
    EXPECT_LT(rel_err(G.mean, Cr.mean), 1e-5) << N << "x" << C;
    EXPECT_LT(rel_err(G.rstd, Cr.rstd), 1e-5) << N << "x" << C;
    EXPECT_EQ(G.out1, Gs.out1) << N << "x" << C;
    EXPECT_EQ(G.out2, Gs.out2) << N << "x" << C;
  }
}

// din accumulates both branches (dout1 through w1, dout2 through w2); each branch's dw/db its own.
TEST_F(NormEmbed, LayerNormPairBackward) {
  for (auto [N, C] : {std::pair<int64_t, int>{777, 768}, {300, 2048}, {70, 4096}, {40, 5120}, {50, 100}}) {
    const auto x = randn(N * C, 2.0f, 0.5f), w1 = randn(C, 0.3f, 1.0f), w2 = randn(C, 0.3f, 1.0f);
    const auto dy1 = randn(N * C), dy2 = randn(N * C), din0 = randn(N * C);
    const auto dw10 = randn(C), db10 = randn(C), dw20 = randn(C), db20 = randn(C);
    const auto [mean, rstd] = row_stats(x, N, C);
    struct Out {
      std::vector<float> din, dw1, db1, dw2, db2;
      bool operator==(const Out&) const = default;
    };
    auto run = [&](Backend& b) {
      Buf in = act_buf(b, x), w1b = act_buf(b, w1), w2b = act_buf(b, w2), d1 = act_buf(b, dy1), d2 = act_buf(b, dy2);
      Buf din = act_buf(b, din0), dw1 = f32_buf(b, dw10), db1 = f32_buf(b, db10), dw2 = f32_buf(b, dw20);
      Buf db2 = f32_buf(b, db20), mb = f32_buf(b, mean), rb = f32_buf(b, rstd);
      b.layernorm_pair_backward(din.p, dw1.f(), db1.f(), dw2.f(), db2.f(), d1.p, d2.p, in.p, w1b.p, w2b.p, mb.f(),
                                rb.f(), N, C);
      return Out{read_act(b, din.p, N * C), read_f32(b, dw1.p, C), read_f32(b, db1.p, C), read_f32(b, dw2.p, C),
                 read_f32(b, db2.p, C)};
    };
    const Out G = run(*gpu), Cr = run(*cpu);
    EXPECT_LT(rel_err(G.din, Cr.din), 1e-2) << N << "x" << C;
    EXPECT_LT(rel_err(G.dw1, Cr.dw1), 1e-4) << N << "x" << C;
    EXPECT_LT(rel_err(G.db1, Cr.db1), 1e-5) << N << "x" << C;
    EXPECT_LT(rel_err(G.dw2, Cr.dw2), 1e-4) << N << "x" << C;
    EXPECT_LT(rel_err(G.db2, Cr.db2), 1e-5) << N << "x" << C;
    EXPECT_TRUE(run(*gpu) == G) << "not deterministic at " << N << "x" << C;
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
