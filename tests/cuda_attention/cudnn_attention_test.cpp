// cuDNN's SDPA behind our attention contract (kernels/cuda/cudnn_attention.h) against the float64
// host reference: forward (out, and lse = cuDNN's softmax stats, which must be our lse), backward
// (dq assigned; dk, dv accumulated onto random starting sums) for every head dim we train, MHA,
// GQA, MQA and uneven MLKV-like groups, sequence lengths off the tile sizes; accumulation across
// three "layers" sharing one K/V; the backward fed by our kernels' forward; unsupported shapes.
// Same tolerances as attention_test.cpp. Skips cleanly without a GPU or without cuDNN.
#include <gtest/gtest.h>

#include <string>

#include "core/backend.h"
#include "core/config.h"
#include "core/errors.h"

// train.attention reaches the backend through select_attention: the CPU backend takes both names
// (one reference attention), a CUDA backend takes "cudnn" only when built with cuDNN, and both
// refuse names they do not know with a ConfigError naming the key. Both take "auto".
TEST(SelectAttention, BackendsTakeWhatTheyHave) {
  auto cpu = mlkv::make_backend("cpu", 1);
  EXPECT_NO_THROW(cpu->select_attention("flash"));
  EXPECT_NO_THROW(cpu->select_attention("cudnn"));
  EXPECT_NO_THROW(cpu->select_attention("auto"));
  EXPECT_EQ(cpu->attention_plan(64, 12, 12), "flash (the one attention of this backend)");
  try {
    cpu->select_attention("fast");
    ADD_FAILURE() << "select_attention(\"fast\") did not throw";
  } catch (const mlkv::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("train.attention"), std::string::npos) << e.what();
  }
  if (!mlkv::cuda_available()) GTEST_SKIP() << "no CUDA device for the CUDA half";
  auto gpu = mlkv::make_backend("cuda");
  EXPECT_NO_THROW(gpu->select_attention("flash"));
  EXPECT_NO_THROW(gpu->select_attention("auto"));
#ifdef MLKV_HAVE_CUDNN
  EXPECT_NO_THROW(gpu->select_attention("cudnn"));
#else
  try {
    gpu->select_attention("cudnn");
    ADD_FAILURE() << "select_attention(\"cudnn\") did not throw in a build without cuDNN";
  } catch (const mlkv::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("cuDNN was not found"), std::string::npos) << e.what();
  }
#endif
  EXPECT_THROW(gpu->select_attention("fast"), mlkv::ConfigError);
}

// The executables make their backend from the [train] section: the attention choice comes with it.
TEST(SelectAttention, MakeBackendFromTrainSectionAppliesIt) {
  mlkv::TrainSection t;
  t.backend = "cpu";
  t.threads = 1;
  t.attention = "cudnn";
  EXPECT_EQ(mlkv::make_backend(t)->device(), mlkv::Device::cpu);
  t.attention = "fast";
  try {
    mlkv::make_backend(t);
    ADD_FAILURE() << "make_backend did not apply train.attention = \"fast\"";
  } catch (const mlkv::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("train.attention"), std::string::npos) << e.what();
  }
}

#if defined(MLKV_HAVE_CUDA) && defined(MLKV_HAVE_CUDNN)
#include <cuda_runtime_api.h>

#include <random>
#include <vector>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/cudnn_attention.h"
#include "tests/cuda_attention/attention_check.h"

namespace {

using namespace mlkv::test;

std::mt19937_64 rng_for(const AttnShape& s) {
  return std::mt19937_64(0xc0d0000ull + s.T * 131 + s.hd * 7 + s.H * 3 + s.KVH);
}

class CudnnAttentionCase : public ::testing::TestWithParam<AttnShape> {};

TEST_P(CudnnAttentionCase, ForwardBackwardMatchReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const AttnShape& s = GetParam();
  auto rng = rng_for(s);
  Inputs in(s, rng);
  Forward f(s);
  f.run(mlkv::cuda::cudnn_attention_forward, s, in);
  f.check(s, in);  // lse included: cuDNN's softmax stats must be our natural-log lse
  Backward b(s, rng);
  b.run(mlkv::cuda::cudnn_attention_backward, s, in, f);
  b.check(s, in);
  Backward assigned(s, rng, DkdvMode::assign);  // dk, dv NaN before: assigned, never read
  assigned.run(mlkv::cuda::cudnn_attention_backward, s, in, f);
  assigned.check(s, in);
}

// The backward fed by our kernels' forward (out, lse): the two implementations' saved tensors
// mean the same thing, so either backward may follow either forward.
TEST_P(CudnnAttentionCase, BackwardAcceptsOurForward) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const AttnShape& s = GetParam();
  if (!mlkv::cuda::attention_supports_head_dim(s.hd)) GTEST_SKIP() << "our kernels lack hd " << s.hd;
  auto rng = rng_for(s);
  Inputs in(s, rng);
  Forward f(s);
  f.run(mlkv::cuda::attention_forward, s, in);
  Backward b(s, rng);
  b.run(mlkv::cuda::cudnn_attention_backward, s, in, f);
  b.check(s, in);
}

// B, T, H, KVH, hd: hd 64, 80, 128, 256; MHA, GQA, MQA and uneven groups; T off the 64/128 tiles.
INSTANTIATE_TEST_SUITE_P(
    Shapes, CudnnAttentionCase,
    ::testing::Values(AttnShape{2, 17, 4, 4, 64}, AttnShape{2, 200, 6, 2, 64}, AttnShape{1, 129, 12, 1, 64},
                      AttnShape{1, 1100, 12, 4, 64}, AttnShape{2, 77, 4, 2, 80}, AttnShape{1, 257, 6, 3, 80},
                      AttnShape{1, 130, 8, 8, 128}, AttnShape{2, 191, 4, 1, 128}, AttnShape{1, 300, 2, 2, 256},
                      AttnShape{2, 65, 4, 1, 256}),
    [](const ::testing::TestParamInfo<AttnShape>& info) { return name(info.param); });

// MLKV across layers: three layers sharing one K/V sum into one fp32 group buffer. Each layer's
// dq is checked too: cuDNN sums dq in a workspace that every call must start clean.
TEST(CudnnAttention, AccumulatesAcrossLayersSharingKV) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  check_layers_sharing_kv(mlkv::cuda::cudnn_attention_forward, mlkv::cuda::cudnn_attention_backward,
                          AttnShape{2, 150, 6, 2, 64}, 78);
}

TEST(CudnnAttention, RejectsUnsupportedShapes) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  DevBuf buf(1 << 20);
  float* f = buf.as<float>();
  EXPECT_THROW(mlkv::cuda::cudnn_attention_forward(buf.p, f, buf.p, buf.p, buf.p, 1, 8, 2, 1, 60, nullptr),
               mlkv::Error);
  EXPECT_THROW(mlkv::cuda::cudnn_attention_forward(buf.p, f, buf.p, buf.p, buf.p, 1, 8, 3, 2, 64, nullptr),
               mlkv::Error);
  EXPECT_THROW(mlkv::cuda::cudnn_attention_backward(buf.p, f, f, buf.p, buf.p, buf.p, buf.p, buf.p, f, 1, 8, 2, 1,
                                                    264, true, nullptr),
               mlkv::Error);
  EXPECT_STREQ(mlkv::cuda::cudnn_attention_unsupported(2, 77, 4, 2, 80), "");
  EXPECT_STRNE(mlkv::cuda::cudnn_attention_unsupported(2, 77, 4, 3, 64), "");
}

}  // namespace

#else  // built without CUDA or without cuDNN

TEST(CudnnAttention, NeedsCudaAndCudnn) { GTEST_SKIP() << "built without CUDA or without cuDNN"; }

#endif
