// Whole training steps, CUDA (bf16) against the CPU fp32 reference, on small Pythia-shaped MLKV
// models (head dim 64): one forward+backward (loss within 1e-2, every parameter tensor's gradient
// at cosine ≥ 0.999), then 200 AdamW steps on a learnable token stream whose loss curves must
// track each other; and one step with train.attention = "cudnn" against the flash path. Both
// backends start from the same bf16-representable weights, so the differences measured are those
// of bf16 compute alone.
#include <cmath>
#include <string>
#include <tuple>

#include "core/config.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/param_layout.h"
#include "cuda_test_util.h"

namespace mlkv::test {
namespace {

struct StepCase {
  const char* name;
  int layers, d, heads, kv_heads;
  std::vector<int> owners;
  bool rope_shared_keys;
};
void PrintTo(const StepCase& c, std::ostream* os) { *os << c.name; }

ModelSpec spec_of(const StepCase& c, int64_t vocab) {
  ModelSpec s;
  s.layers = c.layers;
  s.d_model = c.d;
  s.heads = c.heads;
  s.vocab = vocab;
  s.max_seq_len = 256;
  s.ffn = 4 * c.d;
  s.kv = KvPlan::from_owners(c.layers, c.owners, c.kv_heads);
  s.kv.rope_shared_keys = c.rope_shared_keys;
  s.validate("model_step_test");
  return s;
}

// Pythia's initialisation with LayerNorm and bias terms perturbed (so none is trivially 0 or 1),
// rounded to bf16 so the CPU model computes with exactly the GPU's weights.
std::vector<float> bf16_params(const ParamLayout& layout, const ModelSpec& spec, std::mt19937& rng) {
  std::vector<float> p(layout.total(), 0.0f);
  init_pythia(p, layout, spec, rng());
  std::normal_distribution<float> n(0.0f, 0.05f);
  for (const ParamView& v : layout.views())
    if (v.shape.size() == 1)
      for (int64_t i = 0; i < v.numel; ++i) p[v.offset + i] += n(rng);
  for (auto& x : p) x = bf16_round(x);
  return p;
}

// Every parameter tensor's gradient of `b` at cosine ≥ 0.999 to that of `a`.
void expect_grads_close(const Model& a, const Model& b, const char* a_name, const char* b_name) {
  const auto ga = a.get_grads(), gb = b.get_grads();
  for (const ParamView& v : a.layout().views()) {
    double dot = 0, na = 0, nb = 0;
    for (int64_t i = v.offset; i < v.offset + v.numel; ++i) {
      dot += double(ga[i]) * gb[i];
      na += double(ga[i]) * ga[i];
      nb += double(gb[i]) * gb[i];
    }
    const double cosine = dot / std::sqrt(na * nb + 1e-300);
    EXPECT_GE(cosine, 0.999) << v.name << " (|" << a_name << "| " << std::sqrt(na) << ", |" << b_name << "| "
                             << std::sqrt(nb) << ")";
  }
}

class ModelStep : public CudaVsCpu, public ::testing::WithParamInterface<StepCase> {
 protected:
  static constexpr int64_t kVocab = 1000;
  static constexpr int B = 2, T = 128;  // one micro-batch
  // a and b from the same bf16 weights, then one forward+backward each on one random batch of
  // B·T tokens (target position `ignored` ignored when ≥ 0): their two loss sums.
  std::pair<LossSum, LossSum> same_step(Model& a, Model& b, const ModelSpec& spec, int ignored) {
    const auto params = bf16_params(a.layout(), spec, rng);
    a.set_master(params);
    b.set_master(params);
    const size_t n = size_t(a.batch()) * a.seq_len();
    tokens = randint(n, 0, spec.vocab);
    auto targets = randint(n, 0, spec.vocab);
    if (ignored >= 0) targets[ignored] = -100;
    const float dloss = 1.0f / float(n - (ignored >= 0));
    a.zero_grads();
    b.zero_grads();
    const LossSum la = a.forward_backward(tokens.data(), targets.data(), dloss);
    const LossSum lb = b.forward_backward(tokens.data(), targets.data(), dloss);
    EXPECT_EQ(la.count, lb.count);
    return {la, lb};
  }
  std::vector<int32_t> tokens;  // same_step's inputs
};

TEST_P(ModelStep, OneStepLossAndGradientsMatchCpu) {
  const ModelSpec spec = spec_of(GetParam(), kVocab);
  Model mc(spec, *cpu, B, T), mg(spec, *gpu, B, T);
  const auto [lc, lg] = same_step(mc, mg, spec, 5);
  EXPECT_NEAR(lg.sum / lg.count, lc.sum / lc.count, 1e-2);
  expect_grads_close(mc, mg, "cpu", "gpu");
}

// train.attention = "cudnn": the same step with cuDNN's SDPA in place of our kernels lands on the
// flash path's loss and gradients (both bf16; what differs is the two attentions' rounding).
TEST_P(ModelStep, CudnnAttentionStepMatchesFlash) {
#ifndef MLKV_HAVE_CUDNN
  GTEST_SKIP() << "built without cuDNN";
#else
  const ModelSpec spec = spec_of(GetParam(), kVocab);
  auto gpu_cudnn = make_cuda_backend(0);
  gpu_cudnn->select_attention("cudnn");
  Model mf(spec, *gpu, B, T), mn(spec, *gpu_cudnn, B, T);
  const auto [lf, ln] = same_step(mf, mn, spec, -1);
  EXPECT_NEAR(ln.sum / ln.count, lf.sum / lf.count, 5e-3);
  expect_grads_close(mf, mn, "flash", "cudnn");
#endif
}

// The fused LM head on the GPU: in uneven chunks of 48 rows (bf16 chunk logits, fp32 d embed_out
// summed over the chunks) against all 256 rows at once.
TEST_P(ModelStep, HeadInChunksMatchesWholeHead) {
  const ModelSpec spec = spec_of(GetParam(), kVocab);
  Model whole(spec, *gpu, B, T), chunked(spec, *gpu, B, T);
  whole.set_head_chunk_rows(0);
  chunked.set_head_chunk_rows(48);
  const auto [lw, lc] = same_step(whole, chunked, spec, 250);  // ignored: in the last, short chunk
  EXPECT_NEAR(lc.sum / lc.count, lw.sum / lw.count, 1e-3);
  expect_grads_close(whole, chunked, "whole head", "chunked head");
  const auto logits_w = whole.forward_logits(tokens.data()), logits_c = chunked.forward_logits(tokens.data());
  ASSERT_EQ(logits_c.size(), logits_w.size());
  double worst = 0;
  for (size_t i = 0; i < logits_w.size(); ++i) worst = std::max(worst, double(std::abs(logits_c[i] - logits_w[i])));
  EXPECT_LE(worst, 0.05) << "eval logits, chunked against whole";
}

// train.attention = "auto" takes the path measured faster (at these plans' head dim 64, ours:
// CudaVsCpu.AutoAttentionChoosesPerHeadDimAndGroup has the rule) and says so; its forward is then
// that path's, bit for bit.
TEST_P(ModelStep, AutoAttentionTakesTheMeasuredFasterPath) {
  const ModelSpec spec = spec_of(GetParam(), kVocab);
  auto gpu_auto = make_cuda_backend(0);
  gpu_auto->select_attention("auto");
  const std::string plan = gpu_auto->attention_plan(spec.head_dim(), spec.heads, spec.kv.kv_heads);
#ifndef MLKV_HAVE_CUDNN
  EXPECT_EQ(plan.rfind("flash (train.attention = \"auto\": this build has no cuDNN", 0), 0u) << plan;
#else
  EXPECT_EQ(plan.rfind("flash (train.attention = \"auto\": our kernels measured faster than cuDNN at head dim 64", 0),
            0u)
      << plan;
#endif
  auto gpu_flash = make_cuda_backend(0);
  gpu_flash->select_attention("flash");
  Model ma(spec, *gpu_auto, B, T), mf(spec, *gpu_flash, B, T);
  const auto params = bf16_params(ma.layout(), spec, rng);
  ma.set_master(params);
  mf.set_master(params);
  const auto tokens = randint(size_t(B) * T, 0, kVocab);
  const auto targets = randint(size_t(B) * T, 0, kVocab);
  EXPECT_EQ(ma.forward_loss(tokens.data(), targets.data()).sum, mf.forward_loss(tokens.data(), targets.data()).sum);
  EXPECT_EQ(gpu_auto->attention_plan(spec.head_dim(), spec.heads, spec.kv.kv_heads), plan);
  EXPECT_EQ(gpu->attention_plan(spec.head_dim(), spec.heads, spec.kv.kv_heads), "flash (train.attention = \"flash\")")
      << "a backend made directly runs our kernels";
}

// 200 steps on a repeating stream of `period` random ids: learnable, but longer than what one step
// sees (B·T = 256 tokens), so the loss falls gradually over the run and the two curves must stay
// together all the way down.
TEST_P(ModelStep, TwoHundredStepsTrackCpuLossCurve) {
  const StepCase& c = GetParam();
  const int64_t V = 512;
  const ModelSpec spec = spec_of(c, V);
  const int B = 4, T = 64, steps = 200, period = 1031;
  Model mc(spec, *cpu, B, T), mg(spec, *gpu, B, T);
  const auto params = bf16_params(mc.layout(), spec, rng);
  mc.set_master(params);
  mg.set_master(params);
  OptimSection o;
  o.lr = 2e-3;
  o.warmup_steps = 10;
  AdamW oc(*cpu, mc.layout(), o), og(*gpu, mg.layout(), o);
  const auto cycle = randint(period, 0, V);
  std::vector<int32_t> tokens(size_t(B) * T), targets(size_t(B) * T);
  double max_gap = 0, first = 0, last_c = 0, last_g = 0;
  for (int s = 0; s < steps; ++s) {
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t) {
        const int64_t pos = (int64_t(s) * B + b) * T + t;
        tokens[size_t(b) * T + t] = cycle[pos % period];
        targets[size_t(b) * T + t] = cycle[(pos + 1) % period];
      }
    const float dloss = 1.0f / (B * T);
    mc.zero_grads();
    mg.zero_grads();
    const double lc = mc.forward_backward(tokens.data(), targets.data(), dloss).sum * dloss;
    const double lg = mg.forward_backward(tokens.data(), targets.data(), dloss).sum * dloss;
    const double lr = lr_at(o, s, steps);
    oc.step(mc.master(), mc.compute_params(), mc.grads(), lr);
    og.step(mg.master(), mg.compute_params(), mg.grads(), lr);
    if (s == 0) first = lc;
    // Early on the loss is large and moves fast: compare relative to the loss, floor 0.05.
    max_gap = std::max(max_gap, std::abs(lg - lc) / std::max(lc, 1.0));
    last_c = lc;
    last_g = lg;
    if (s % 25 == 0 || s == steps - 1) std::printf("  step %3d  cpu %.4f  cuda %.4f\n", s, lc, lg);
  }
  EXPECT_LT(last_c, 0.5 * first) << "the stream is learnable: the CPU loss should fall far";
  EXPECT_LT(max_gap, 0.05) << "largest gap between the curves (relative, loss floor 1)";
  EXPECT_NEAR(last_g, last_c, 0.05 + 0.1 * last_c);
}

// "auto" per (head dim, query heads a KV head): ours at hd 64, at hd 80 with K/V shared (where
// ours measured faster) and at hd 256 with K/V shared (a tie, ours faster in training), cuDNN's at
// hd 80 and 256 MHA and at hd 128.
TEST_F(CudaVsCpu, AutoAttentionChoosesPerHeadDimAndGroup) {
  gpu->select_attention("auto");
#ifndef MLKV_HAVE_CUDNN
  EXPECT_EQ(gpu->attention_plan(64, 12, 1).rfind("flash (train.attention = \"auto\": this build has no cuDNN", 0), 0u);
#else
  // (head dim, query heads, KV heads) and the start of the plan line "auto" gives for them.
  const std::string flash = "flash (train.attention = \"auto\": ";
  const std::string ours64 = flash + "our kernels measured faster than cuDNN at head dim 64 (";
  const std::string ours80 = flash + "our kernels measured faster than cuDNN at head dim 80 with K/V shared";
  const std::string ours256 = flash + "our kernels measured as fast as cuDNN at head dim 256 with K/V shared";
  const std::string cudnn = "cudnn (train.attention = \"auto\": cuDNN measured faster";
  const struct {
    int hd, H, KVH;
    const std::string& starts;
  } expected[] = {{64, 12, 1, ours64},    {64, 12, 2, ours64},   {64, 12, 4, ours64},   {64, 12, 6, ours64},
                  {64, 12, 12, ours64},   {80, 32, 4, ours80},   {80, 32, 16, ours80},  {256, 8, 1, ours256},
                  {256, 8, 2, ours256},   {128, 16, 1, cudnn},   {128, 16, 16, cudnn},  {256, 8, 8, cudnn},
                  {80, 32, 32, cudnn}};
  for (const auto& e : expected) {
    const std::string plan = gpu->attention_plan(e.hd, e.H, e.KVH);
    EXPECT_EQ(plan.rfind(e.starts, 0), 0u) << e.hd << ", " << e.H << ", " << e.KVH << ": " << plan;
  }
#endif
}

INSTANTIATE_TEST_SUITE_P(Plans, ModelStep,
                         ::testing::Values(StepCase{"mlkv_uneven_gqa", 4, 256, 4, 2, {0, 1}, true},
                                           StepCase{"mha", 3, 256, 4, 4, {0, 1, 2}, true},
                                           StepCase{"mlkv1_seed_compat", 3, 128, 2, 1, {0}, false}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace mlkv::test
