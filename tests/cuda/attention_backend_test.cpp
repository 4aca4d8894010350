// The backend's attention entry points reach the MLKV flash kernels with the right stream and
// arguments: one GQA shape and one MQA shape against the CPU reference, forward and backward
// (dK/dV added onto pre-filled values, and assigned over them). The kernels' own exhaustive tests are in
// tests/cuda_attention.
#include "cuda_test_util.h"

namespace mlkv::test {
namespace {

using AttentionViaBackend = CudaVsCpu;

TEST_F(AttentionViaBackend, ForwardBackwardMatchCpu) {
  for (auto [B, T, H, KVH, hd] : {std::tuple{2, 100, 4, 2, 64}, std::tuple{1, 257, 4, 1, 128}})
    for (bool accumulate : {true, false}) {
    const int64_t nq = int64_t{B} * H * T * hd, nkv = int64_t{B} * KVH * T * hd;
    const auto q = randn(nq), k = randn(nkv), v = randn(nkv), dout = randn(nq);
    const auto dk0 = randn(nkv), dv0 = randn(nkv);
    struct Out {
      std::vector<float> out, lse, dq, dk, dv;
    };
    auto run = [&](Backend& b) {
      Buf qb = act_buf(b, q), kb = act_buf(b, k), vb = act_buf(b, v), ob(b, nq * b.act_bytes());
      Buf lse(b, int64_t{B} * H * T * 4), dob = act_buf(b, dout), dq(b, nq * b.act_bytes());
      Buf dk = f32_buf(b, dk0), dv = f32_buf(b, dv0);
      poison_act(b, ob.p, nq);
      poison_act(b, dq.p, nq);
      b.attention_forward(ob.p, lse.f(), qb.p, kb.p, vb.p, B, T, H, KVH, hd);
      b.attention_backward(dq.p, dk.f(), dv.f(), dob.p, qb.p, kb.p, vb.p, ob.p, lse.f(), B, T, H, KVH, hd,
                           accumulate);
      return Out{read_act(b, ob.p, nq), read_f32(b, lse.p, size_t(B) * H * T), read_act(b, dq.p, nq),
                 read_f32(b, dk.p, nkv), read_f32(b, dv.p, nkv)};
    };
    const Out G = run(*gpu), C = run(*cpu);
    EXPECT_LT(rel_err(G.out, C.out), 2e-2);
    EXPECT_LT(rel_err(G.lse, C.lse), 1e-3);
    EXPECT_LT(rel_err(G.dq, C.dq), 2e-2);
    EXPECT_LT(rel_err(G.dk, C.dk), 2e-2) << "accumulate " << accumulate;
    EXPECT_LT(rel_err(G.dv, C.dv), 2e-2) << "accumulate " << accumulate;
  }
}

}  // namespace
}  // namespace mlkv::test
