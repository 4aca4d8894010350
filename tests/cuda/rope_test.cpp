// CUDA vs CPU: the fused head split + partial rotary (forward and backward, q/k/v, rotate_k on
// and off, non-owner layers with KVH = 0) and the standalone rotary. Head dims and rotary widths
// cover every vector path: rot/2 a multiple of 8 (hd 64, 128), of 2 (hd 80, 32), odd (rot 6).
#include "cuda_test_util.h"

namespace mlkv::test {
namespace {

struct RopeCase {
  int B, T, H, KVH, hd, rot;
  bool rotate_k;
};

class Rope : public CudaVsCpu, public ::testing::WithParamInterface<RopeCase> {};

TEST_P(Rope, SplitForward) {
  const auto c = GetParam();
  const int64_t N = int64_t{c.B} * c.T, row = int64_t{c.H + 2 * c.KVH} * c.hd;
  const int64_t nq = N * c.H * c.hd, nkv = N * c.KVH * c.hd;
  const auto qkv = randn(N * row, 1.5f);
  struct Out {
    std::vector<float> q, k, v;
  };
  auto run = [&](Backend& b) {
    Buf in = act_buf(b, qkv), q(b, nq * b.act_bytes()), k(b, (nkv + 1) * b.act_bytes()), v(b, (nkv + 1) * b.act_bytes());
    poison_act(b, q.p, nq);
    poison_act(b, k.p, nkv);
    poison_act(b, v.p, nkv);
    b.qkv_split_rope_forward(q.p, k.p, v.p, in.p, c.B, c.T, c.H, c.KVH, c.hd, c.rot, 10000.0f, c.rotate_k);
    return Out{read_act(b, q.p, nq), read_act(b, k.p, nkv), read_act(b, v.p, nkv)};
  };
  const Out G = run(*gpu), C = run(*cpu);
  EXPECT_LT(rel_err(G.q, C.q), 1e-2);
  if (c.KVH > 0) {
    EXPECT_LT(rel_err(G.k, C.k), 1e-2);
    EXPECT_EQ(G.v, C.v);  // a copy
  }
}

TEST_P(Rope, SplitBackward) {
  const auto c = GetParam();
  const int64_t N = int64_t{c.B} * c.T, row = int64_t{c.H + 2 * c.KVH} * c.hd;
  const int64_t nq = N * c.H * c.hd, nkv = N * c.KVH * c.hd;
  const auto dq = randn(nq), dk = randn(nkv), dv = randn(nkv);
  auto run = [&](Backend& b) {
    Buf dqb = act_buf(b, dq), dkb = f32_buf(b, dk), dvb = f32_buf(b, dv), out(b, N * row * b.act_bytes());
    poison_act(b, out.p, N * row);
    b.qkv_split_rope_backward(out.p, dqb.p, c.KVH ? dkb.f() : nullptr, c.KVH ? dvb.f() : nullptr, c.B, c.T, c.H,
                              c.KVH, c.hd, c.rot, 10000.0f, c.rotate_k);
    return read_act(b, out.p, N * row);
  };
  EXPECT_LT(rel_err(run(*gpu), run(*cpu)), 1e-2);
}

TEST_P(Rope, PlainForwardAndBackwardAccumulate) {
  const auto c = GetParam();
  const int64_t BH = int64_t{c.B} * c.H, n = BH * c.T * c.hd;
  const auto x = randn(n), g = randn(n), dx0 = randn(n);
  auto fwd = [&](Backend& b) {
    Buf in = act_buf(b, x), out(b, n * b.act_bytes());
    poison_act(b, out.p, n);
    b.rope_forward(out.p, in.p, BH, c.T, c.hd, c.rot, 10000.0f);
    return read_act(b, out.p, n);
  };
  auto bwd = [&](Backend& b) {
    Buf dout = f32_buf(b, g), dx = f32_buf(b, dx0);
    b.rope_backward_accumulate(dx.f(), dout.f(), BH, c.T, c.hd, c.rot, 10000.0f);
    return read_f32(b, dx.p, n);
  };
  EXPECT_LT(rel_err(fwd(*gpu), fwd(*cpu)), 1e-2);
  EXPECT_LT(rel_err(bwd(*gpu), bwd(*cpu)), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Cases, Rope,
                         ::testing::Values(RopeCase{2, 37, 4, 2, 64, 16, true}, RopeCase{1, 2048, 2, 1, 64, 16, true},
                                           RopeCase{2, 19, 4, 4, 80, 20, false}, RopeCase{2, 33, 4, 0, 128, 32, true},
                                           RopeCase{1, 65, 2, 1, 256, 64, true}, RopeCase{2, 11, 3, 1, 32, 8, true},
                                           RopeCase{2, 13, 2, 2, 16, 6, true}, RopeCase{1, 9, 2, 1, 16, 16, true}),
                         [](const auto& info) {
                           const RopeCase& c = info.param;
                           return "T" + std::to_string(c.T) + "_H" + std::to_string(c.H) + "_KVH" +
                                  std::to_string(c.KVH) + "_hd" + std::to_string(c.hd) + "_rot" +
                                  std::to_string(c.rot) + (c.rotate_k ? "" : "_unrotatedK");
                         });

}  // namespace
}  // namespace mlkv::test
