// CUDA (cuBLASLt, bf16 operands, fp32 accumulate) vs CPU fp32 linear layers: forward with and
// without bias, assigning and accumulating; backward with din assigned/accumulated, dw and dbias
// accumulated onto random pre-filled values (dbias by the column-sum pass, or with MLKV_GEMM_BGRAD=1
// by the weight GEMM's epilogue: on the H200 of 2026-12-02 both passed; and dbias alone).
// Shapes include unaligned leading dimensions.
#include "cuda_test_util.h"

namespace mlkv::test {
namespace {

struct Shape {
  int64_t N;
  int IC, OC;
};

class Matmul : public CudaVsCpu, public ::testing::WithParamInterface<Shape> {};

TEST_P(Matmul, Forward) {
  const auto [N, IC, OC] = GetParam();
  const auto x = randn(N * IC), w = randn(int64_t{OC} * IC, 0.05f), bias = randn(OC), prev = randn(N * OC);
  for (bool with_bias : {false, true})
    for (bool accumulate : {false, true}) {
      auto run = [&](Backend& b) {
        Buf in = act_buf(b, x), wb = act_buf(b, w), bb = act_buf(b, bias), out = act_buf(b, prev);
        if (!accumulate) poison_act(b, out.p, N * OC);
        b.matmul_forward(out.p, in.p, wb.p, with_bias ? bb.p : nullptr, N, IC, OC, accumulate);
        return read_act(b, out.p, N * OC);
      };
      EXPECT_LT(rel_err(run(*gpu), run(*cpu)), 1e-2) << "bias=" << with_bias << " accumulate=" << accumulate;
    }
}

TEST_P(Matmul, Backward) {
  const auto [N, IC, OC] = GetParam();
  const auto x = randn(N * IC), w = randn(int64_t{OC} * IC, 0.05f), dy = randn(N * OC);
  const auto din0 = randn(N * IC), dw0 = randn(int64_t{OC} * IC), db0 = randn(OC);
  for (bool acc_din : {false, true}) {
    struct Out {
      std::vector<float> din, dw, db;
    };
    auto run = [&](Backend& b) {
      Buf in = act_buf(b, x), wb = act_buf(b, w), dout = act_buf(b, dy), din = act_buf(b, din0);
      Buf dw = f32_buf(b, dw0), db = f32_buf(b, db0);
      if (!acc_din) poison_act(b, din.p, N * IC);
      b.matmul_backward(din.p, dw.f(), db.f(), dout.p, in.p, wb.p, N, IC, OC, acc_din);
      return Out{read_act(b, din.p, N * IC), read_f32(b, dw.p, size_t(OC) * IC), read_f32(b, db.p, OC)};
    };
    const Out G = run(*gpu), C = run(*cpu);
    EXPECT_LT(rel_err(G.din, C.din), 1e-2) << "accumulate_din=" << acc_din;
    // dw, dbias: exact bf16 inputs, fp32 accumulation on both sides: only summation order differs.
    EXPECT_LT(rel_err(G.dw, C.dw), 1e-4);
    EXPECT_LT(rel_err(G.db, C.db), 1e-5);
  }
}

TEST_P(Matmul, BackwardWithoutDinAndBias) {
  const auto [N, IC, OC] = GetParam();
  const auto x = randn(N * IC), w = randn(int64_t{OC} * IC, 0.05f), dy = randn(N * OC), dw0 = randn(int64_t{OC} * IC);
  auto run = [&](Backend& b) {
    Buf in = act_buf(b, x), wb = act_buf(b, w), dout = act_buf(b, dy), dw = f32_buf(b, dw0);
    b.matmul_backward(nullptr, dw.f(), nullptr, dout.p, in.p, wb.p, N, IC, OC, false);
    return read_f32(b, dw.p, size_t(OC) * IC);
  };
  EXPECT_LT(rel_err(run(*gpu), run(*cpu)), 1e-4);
}

// dbias without dw: no weight-gradient GEMM to carry the bias gradient in its epilogue, so the
// column-sum pass makes it whatever MLKV_GEMM_BGRAD says.
TEST_P(Matmul, BiasGradientAlone) {
  const auto [N, IC, OC] = GetParam();
  const auto x = randn(N * IC), w = randn(int64_t{OC} * IC, 0.05f), dy = randn(N * OC), db0 = randn(OC);
  auto run = [&](Backend& b) {
    Buf in = act_buf(b, x), wb = act_buf(b, w), dout = act_buf(b, dy), db = f32_buf(b, db0);
    b.matmul_backward(nullptr, nullptr, db.f(), dout.p, in.p, wb.p, N, IC, OC, false);
    return read_f32(b, db.p, OC);
  };
  EXPECT_LT(rel_err(run(*gpu), run(*cpu)), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Matmul,
                         ::testing::Values(Shape{256, 128, 384}, Shape{512, 768, 2304}, Shape{1024, 3072, 768},
                                           Shape{37, 72, 40}, Shape{33, 36, 20}),
                         [](const auto& info) {
                           return "N" + std::to_string(info.param.N) + "_IC" + std::to_string(info.param.IC) +
                                  "_OC" + std::to_string(info.param.OC);
                         });

}  // namespace
}  // namespace mlkv::test
