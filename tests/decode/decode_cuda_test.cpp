// CUDA (bf16) decoding: for every KV plan in configs/ and both rope modes, the decode logits
// equal the CUDA full forward's within bf16 tolerance and the greedy tokens match (a mismatch only
// where the full forward's two best logits are within bf16 noise); and the decode attention op
// against the fp32 reference, for the split (small batch) and unsplit (large batch) paths. The
// tensor-core decode kernel is the default; CTest runs these again with MLKV_DECODE_MMA=0 for the
// SIMT kernel (decode_cuda_simt_kernel, tests/decode/CMakeLists.txt).
// Skipped without a GPU. Plans keep their layers, owners and kv_heads; heads are capped at 12 and
// the config's head dim is kept (64, 80 or 256) on an ffn of d and a 512-token vocabulary.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "core/backend.h"
#include "tests/decode/decode_check.h"

namespace mlkv::test {
namespace {

bool have_gpu() { return cuda_available(); }

class CudaDecodePlans : public ::testing::TestWithParam<std::tuple<std::string, bool>> {};

TEST_P(CudaDecodePlans, DecodeEqualsFullForward) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const auto& [config, shared] = GetParam();
  const ModelSpec probe = load_config(std::string(MLKV_SOURCE_DIR) + "/" + config).spec();
  const ModelSpec spec = shrunk_plan(config, shared, probe.head_dim(), 12, 1, 512);
  auto be = make_backend("cuda");
  const DecodeErrors e = check_decode(spec, *be, {5, 17, 2, 33}, 8, 0.05, 0.02);
  std::printf("[ decode   ] %s %s: worst relative error %.3g, near-tie token flips %d of %d\n", config.c_str(),
              shared ? "shared" : "paper", e.worst_rel, e.near_tie_mismatches, e.positions);
  EXPECT_LE(e.worst_rel, 3e-2) << spec.kv.name(spec.heads);
  EXPECT_EQ(e.token_mismatches, 0);
  EXPECT_LE(e.near_tie_mismatches, e.positions / 8);
}

INSTANTIATE_TEST_SUITE_P(AllConfigs, CudaDecodePlans,
                         ::testing::Combine(::testing::ValuesIn(plan_configs()), ::testing::Bool()),
                         plan_test_name);

// Device buffer of `host` in the backend's compute dtype.
void* act_upload(Backend& be, const std::vector<float>& host) {
  float* tmp = static_cast<float*>(be.alloc(host.size() * 4));
  be.upload(tmp, host.data(), host.size() * 4);
  void* out = be.alloc(host.size() * be.act_bytes());
  be.cast_f32_to_act(out, tmp, static_cast<int64_t>(host.size()));
  be.release(tmp);
  return out;
}
std::vector<float> act_download(Backend& be, const void* p, int64_t n) {
  float* tmp = static_cast<float*>(be.alloc(n * 4));
  be.cast_act_to_f32(tmp, p, n);
  std::vector<float> h = be.download_f32(tmp, n);
  be.release(tmp);
  return h;
}

struct AttnCase {
  int B, H, KVH, hd, C, rot_k;
};

class CudaDecodeAttention : public ::testing::TestWithParam<AttnCase> {};

TEST_P(CudaDecodeAttention, MatchesReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const AttnCase c = GetParam();
  auto gpu = make_backend("cuda");
  auto cpu = make_backend("cpu", 4);
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0, 1);
  const auto randn = [&](size_t n) {  // bf16-exact values, so both backends see the same inputs
    std::vector<float> v(n);
    for (auto& x : v) {
      x = nd(rng);
      uint32_t u;
      std::memcpy(&u, &x, 4);
      u &= 0xffff0000u;
      std::memcpy(&x, &u, 4);
    }
    return v;
  };
  const size_t cache = size_t(c.B) * c.KVH * c.C * c.hd;
  const std::vector<float> q = randn(size_t(c.B) * c.H * c.hd), k = randn(cache), v = randn(cache);
  std::vector<int32_t> pos(c.B);
  for (int b = 0; b < c.B; ++b) pos[b] = (b * 7919 + 13) % c.C;  // every length, short and full
  pos[0] = c.C - 1;
  std::vector<float> ref(size_t(c.B) * c.H * c.hd);
  cpu->decode_attention(ref.data(), q.data(), k.data(), v.data(), pos.data(), c.B, c.H, c.KVH, c.hd, c.C, c.rot_k,
                        10000.0f);
  void *gq = act_upload(*gpu, q), *gk = act_upload(*gpu, k), *gv = act_upload(*gpu, v);
  void* gout = gpu->alloc(ref.size() * 2);
  auto* gpos = static_cast<int32_t*>(gpu->alloc(pos.size() * 4));
  gpu->upload(gpos, pos.data(), pos.size() * 4);
  gpu->decode_attention(gout, gq, gk, gv, gpos, c.B, c.H, c.KVH, c.hd, c.C, c.rot_k, 10000.0f);
  const std::vector<float> got = act_download(*gpu, gout, static_cast<int64_t>(ref.size()));
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) num += (got[i] - ref[i]) * double(got[i] - ref[i]), den += ref[i] * double(ref[i]);
  EXPECT_LE(std::sqrt(num / den), 1e-2);
  // deterministic: a second call gives the same bits
  gpu->decode_attention(gout, gq, gk, gv, gpos, c.B, c.H, c.KVH, c.hd, c.C, c.rot_k, 10000.0f);
  EXPECT_EQ(act_download(*gpu, gout, static_cast<int64_t>(ref.size())), got);
  for (void* p : {gq, gk, gv, gout, static_cast<void*>(gpos)}) gpu->release(p);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaDecodeAttention,
                         ::testing::Values(AttnCase{1, 12, 1, 64, 700, 0},     // MLKV, split context
                                           AttnCase{3, 12, 12, 64, 300, 16},   // MHA, paper-mode rotation
                                           AttnCase{600, 12, 1, 64, 90, 0},    // large batch: no split
                                           AttnCase{2, 8, 1, 256, 333, 64},    // 1B MLKV-8 shape
                                           AttnCase{5, 8, 8, 256, 130, 0},     // 1B MHA shape
                                           AttnCase{4, 32, 1, 80, 200, 20},    // 2.8B MLKV head dim
                                           AttnCase{2, 12, 4, 64, 1000, 0},    // GQA-48 groups, split
                                           AttnCase{3, 16, 4, 128, 500, 0},    // head dim 128
                                           AttnCase{70000, 1, 1, 64, 8, 0}));  // batch > 65535 (grid y/z limit)

}  // namespace
}  // namespace mlkv::test
