// The CUDA MLKV attention kernels against a float64 host reference: forward (out, lse) and
// backward (dq assigned; dk, dv accumulated or assigned) for every head dim, GQA/MQA/MLKV group sizes,
// sequence lengths that are and are not multiples of the tiles, accumulation across several
// "layers" sharing one K/V, bitwise determinism, and the errors for unsupported shapes.
// Inputs are fresh random bf16 values; outputs are poisoned with NaN before each run so that an
// unwritten element fails. Skips cleanly when no GPU is present.
#include <gtest/gtest.h>

#ifdef MLKV_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/errors.h"
#include "kernels/cuda/attention.h"
#include "tests/cuda_attention/attention_check.h"

namespace {

using namespace mlkv::test;

// Selects a kernel family (and, within sm90, the forward and backward kernels) for one test and
// restores the defaults afterwards.
struct KernelFamily {
  explicit KernelFamily(bool sm90, bool ws_forward = true, bool ws_backward = true) {
    mlkv::cuda::attention_use_sm90(sm90);
    mlkv::cuda::attention_use_ws_forward(ws_forward);
    mlkv::cuda::attention_use_ws_backward(ws_backward);
  }
  ~KernelFamily() {
    mlkv::cuda::attention_use_sm90(true);
    mlkv::cuda::attention_use_ws_forward(true);
    mlkv::cuda::attention_use_ws_backward(true);
  }
};

void check_case(const AttnShape& s);

class AttentionCase : public ::testing::TestWithParam<AttnShape> {};

// The default family: the Hopper wgmma kernels on an H100/H200 built with sm_90a code.
TEST_P(AttentionCase, ForwardBackwardMatchReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KernelFamily family(true);
  const AttnShape& s = GetParam();
  std::printf("  [%s kernels, forward: %s, backward: %s]\n",
              mlkv::cuda::attention_sm90_active() ? "sm90 wgmma" : "mma.sync",
              mlkv::cuda::attention_forward_kernel(s.hd),
              mlkv::cuda::attention_backward_kernel(s.hd, s.H / s.KVH));
  check_case(GetParam());
}

// The sm90 family with the lockstep forward instead of the warp-specialised one (whose hd 80 runs
// on the hd-128 kernel, columns 80-127 zero-filled).
TEST_P(AttentionCase, LockstepForwardMatchesReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KernelFamily family(true, false);
  check_case(GetParam());
}

// The sm90 family with the two-kernel backward (dq kernel + dK/dV kernel) instead of the
// warp-specialised one (whose hd 80 runs on the hd-128 kernel, as the forward's).
TEST_P(AttentionCase, TwoKernelBackwardMatchesReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KernelFamily family(true, true, false);
  check_case(GetParam());
}

// The portable mma.sync kernels (the fallback off Hopper), forced.
TEST_P(AttentionCase, MmaSyncKernelsMatchReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KernelFamily family(false);
  check_case(GetParam());
}

void check_case(const AttnShape& s) {
  std::mt19937_64 rng(0x5eed0000ull + s.T * 131 + s.hd * 7 + s.H * 3 + s.KVH);
  Inputs in(s, rng);
  Forward f(s);
  f.run(mlkv::cuda::attention_forward, s, in);
  f.check(s, in);
  Backward b(s, rng);
  b.run(mlkv::cuda::attention_backward, s, in, f);
  b.check(s, in);

  // Determinism: the same call again from the same starting buffers is bitwise identical.
  const auto dq_h = b.dq_h;
  const auto dk_h = b.dk_h, dv_h = b.dv_h;
  b.run(mlkv::cuda::attention_backward, s, in, f);
  EXPECT_TRUE(b.dq_h == dq_h) << "dq not deterministic " << name(s);
  EXPECT_TRUE(b.dk_h == dk_h) << "dk not deterministic " << name(s);
  EXPECT_TRUE(b.dv_h == dv_h) << "dv not deterministic " << name(s);

  // The first layer of a group assigns dk, dv: they start as NaN, so a kernel that reads them or
  // leaves an element unwritten fails.
  Backward assigned(s, rng, DkdvMode::assign);
  assigned.run(mlkv::cuda::attention_backward, s, in, f);
  assigned.check(s, in);
}

// B, T, H, KVH, hd: every head dim; MHA, GQA, MQA groups; T = 1, tile multiples and ragged tails.
INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionCase,
    ::testing::Values(AttnShape{1, 1, 2, 1, 64}, AttnShape{2, 17, 4, 4, 64}, AttnShape{1, 64, 4, 1, 64},
                      AttnShape{2, 200, 6, 2, 64}, AttnShape{1, 129, 12, 1, 64}, AttnShape{1, 1100, 2, 1, 64},
                      AttnShape{2, 77, 4, 2, 80}, AttnShape{1, 257, 6, 3, 80}, AttnShape{1, 150, 3, 3, 80},
                      AttnShape{1, 130, 8, 8, 128}, AttnShape{2, 191, 4, 1, 128}, AttnShape{1, 2048, 2, 1, 128},
                      AttnShape{1, 300, 2, 2, 256}, AttnShape{2, 65, 4, 1, 256}, AttnShape{1, 31, 3, 1, 256}),
    [](const ::testing::TestParamInfo<AttnShape>& info) { return name(info.param); });

// Few K/V blocks for the SMs, so the dK/dV kernels split each group's query heads over several
// blocks and add their partials in a fixed order (DkdvSplit, kernels/cuda/attention_launch.cuh):
// one head per slice (1000 keys: ragged last key tile; hd 256 on the mma.sync dK/dV kernel) and,
// with 34 × 3 key tiles ≥ 1.5 blocks per SM only at 2 slices, two heads per slice. check_case
// also runs the backward twice and compares bitwise.
INSTANTIATE_TEST_SUITE_P(HeadSplit, AttentionCase,
                         ::testing::Values(AttnShape{1, 1000, 8, 1, 128}, AttnShape{34, 300, 4, 1, 64},
                                           AttnShape{1, 333, 4, 1, 256}),
                         [](const ::testing::TestParamInfo<AttnShape>& info) { return name(info.param); });

// MLKV across layers: three layers sharing one K/V add into one fp32 group buffer.
TEST(Attention, AccumulatesAcrossLayersSharingKV) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  check_layers_sharing_kv(mlkv::cuda::attention_forward, mlkv::cuda::attention_backward, AttnShape{2, 150, 4, 2, 64},
                          77);
}

// The same with the head split on (4 slices): slice 0 adds into the running sum, the others'
// partials are added after it, on every layer.
TEST(Attention, HeadSplitAccumulatesAcrossLayers) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  check_layers_sharing_kv(mlkv::cuda::attention_forward, mlkv::cuda::attention_backward, AttnShape{1, 260, 4, 1, 80},
                          78);
}

// The warp-specialised backward's two remaining paths across layers: the head split (4 slices of
// one head; slices 1..3 as partials) at hd 128, and dQ's ordered key-tile adds over 9 query tiles
// with three layers at hd 64 (each layer's dq assigned, dk/dv summed); at hd 256 (its own kernel:
// 64-key tiles, dQ staged in the Q/dO stage) over 8 query tiles; at hd 80 (the hd-128 kernel with
// zero-filled columns: only the tensors' 80 columns stored, dO per head, 96-column dQ sums) over
// 11 query tiles with a ragged last one.
TEST(Attention, WsBackwardAccumulatesAcrossLayers) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KernelFamily family(true);
  check_layers_sharing_kv(mlkv::cuda::attention_forward, mlkv::cuda::attention_backward, AttnShape{1, 260, 4, 1, 128},
                          79);
  check_layers_sharing_kv(mlkv::cuda::attention_forward, mlkv::cuda::attention_backward, AttnShape{3, 555, 6, 3, 64},
                          80);
  check_layers_sharing_kv(mlkv::cuda::attention_forward, mlkv::cuda::attention_backward, AttnShape{2, 500, 4, 2, 256},
                          81);
  check_layers_sharing_kv(mlkv::cuda::attention_forward, mlkv::cuda::attention_backward, AttnShape{2, 700, 6, 3, 80},
                          82);
}

// The warp-specialised backward's other forms at hd 64 (the measurement switch MLKV_ATTN_BWD_DQ):
// 64-query steps with each consumer summing dQ over its own keys (=1, two ordered partials a key
// tile) or with the two taking turns (=2), instead of 128-query steps: reference and determinism.
TEST(Attention, WsBackwardOtherDqFormsMatchReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KernelFamily family(true);
  for (const char* mode : {"1", "2"}) {
    ::setenv("MLKV_ATTN_BWD_DQ", mode, 1);
    for (const AttnShape& s :
         {AttnShape{2, 200, 6, 2, 64}, AttnShape{1, 1100, 2, 1, 64}, AttnShape{34, 300, 4, 1, 64}})
      check_case(s);
  }
  ::unsetenv("MLKV_ATTN_BWD_DQ");
}

// The warp-specialised backward at hd 64 with several KV heads a block (MLKV_ATTN_BWD_KV_PER,
// the default for MHA shapes with many blocks): each KV head's K/V in a two-slot ring, its dK/dV
// stored after its last step. MHA with 2, 3 and 4 heads a block; a single key tile, where an item
// is one step (shorter than the 2-stage Q/dO ring); GQA (2 query heads a KV head, enough blocks
// for no head split); reference, assign and determinism (check_case), and three layers summing.
TEST(Attention, WsBackwardSeveralKvHeadsABlock) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KernelFamily family(true);
  for (const char* kv : {"2", "3", "4"}) {
    ::setenv("MLKV_ATTN_BWD_KV_PER", kv, 1);
    for (const AttnShape& s : {AttnShape{2, 300, 12, 12, 64}, AttnShape{3, 100, 12, 12, 64}})
      check_case(s);
  }
  ::setenv("MLKV_ATTN_BWD_KV_PER", "3", 1);
  check_case(AttnShape{17, 400, 6, 3, 64});
  ::setenv("MLKV_ATTN_BWD_KV_PER", "2", 1);
  check_layers_sharing_kv(mlkv::cuda::attention_forward, mlkv::cuda::attention_backward, AttnShape{2, 333, 4, 4, 64},
                          82);
  ::unsetenv("MLKV_ATTN_BWD_KV_PER");
}

// The head split forced (MLKV_ATTN_BWD_SPLIT, a measurement switch) to 2 and 4 slices of the
// group, fewer than these small grids take by default (one head a block): every head dim, MQA and
// GQA; reference, assign and determinism.
TEST(Attention, ForcedHeadSplitMatchesReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KernelFamily family(true);
  for (const char* n : {"2", "4"}) {
    ::setenv("MLKV_ATTN_BWD_SPLIT", n, 1);
    for (const AttnShape& s : {AttnShape{6, 500, 8, 1, 64}, AttnShape{4, 300, 8, 2, 80}, AttnShape{3, 700, 8, 1, 128},
                               AttnShape{4, 400, 8, 1, 256}})
      check_case(s);
  }
  ::unsetenv("MLKV_ATTN_BWD_SPLIT");
}

// The forward run with the measurement switch `var` at 1 and at 0 (one block per SM or per work
// tile; K and V on barriers of their own or one): both match the reference and each other
// bitwise, as the two forms differ only in scheduling and synchronisation.
void expect_forward_switch_agrees(const char* var, const AttnShape& s, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Inputs in(s, rng);
  Forward on(s), off(s);
  ::setenv(var, "1", 1);
  on.run(mlkv::cuda::attention_forward, s, in);
  ::setenv(var, "0", 1);
  off.run(mlkv::cuda::attention_forward, s, in);
  ::unsetenv(var);
  on.check(s, in);
  off.check(s, in);
  const std::string at = name(s) + " (" + var + ")";
  EXPECT_TRUE(download<uint16_t>(on.out, s.q_elems()) == download<uint16_t>(off.out, s.q_elems())) << "out " << at;
  EXPECT_TRUE(download<float>(on.lse, s.vec_elems()) == download<float>(off.lse, s.vec_elems())) << "lse " << at;
}

// The warp-specialised forward with one block per SM walking the work tiles (its K/V ring and
// barrier phases running on across tiles) and with one block per work tile: both match the
// reference and each other bitwise. The shapes have more work tiles than an H100/H200 has SMs, so
// persistent blocks take several, ragged last tiles included.
TEST(Attention, PersistentAndPerTileForwardAgree) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KernelFamily family(true);
  for (const AttnShape& s : {AttnShape{4, 700, 6, 2, 64}, AttnShape{6, 1000, 4, 1, 128}, AttnShape{4, 600, 8, 2, 256}})
    expect_forward_switch_agrees("MLKV_ATTN_PERSISTENT", s, 0xfeed0000ull + s.hd);
}

// The warp-specialised forward with K and V stages on barriers of their own (the default above
// hd 64: K released after S, loaded ahead of V) against one barrier for both (hd 64's default),
// both forced (MLKV_ATTN_FWD_SPLIT_KV=1 / =0): every head dim, one and several K/V tiles a work
// tile (T 1 to 1000), persistent (hd 64) and per-tile blocks; reference and bitwise equality
// (only the synchronisation differs).
TEST(Attention, SplitKvBarriersForwardAgrees) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KernelFamily family(true);
  for (const AttnShape& s : {AttnShape{4, 700, 6, 2, 64}, AttnShape{3, 100, 4, 4, 64}, AttnShape{2, 1000, 4, 1, 128},
                             AttnShape{2, 500, 6, 3, 80}, AttnShape{3, 600, 4, 4, 256}, AttnShape{1, 1, 2, 1, 256}})
    expect_forward_switch_agrees("MLKV_ATTN_FWD_SPLIT_KV", s, 0xabc00000ull + s.hd + s.T);
}

// L2 sections (MLKV_ATTN_L2_MIB; kernels/cuda/attention_launch.cuh): the warp-specialised
// kernels number their work by sections of KV heads, of (b, KV head) pairs in the backward, of
// sizes that differ by at most one. Small budgets cut these shapes into several sections: the
// first shape's forward 3 + 3 KV heads at 1 MiB, its backward (head split on) 2 + 2 + 2 pairs at
// 3 MiB; MHA with three KV heads a backward block, 8 sections of 1 pair at 1 MiB, 4 + 4 at 4
// MiB; hd 128, 2 + 2 forward units and 4 backward sections of one pair, whose ordered dQ adds
// cross sections; hd 256 4 + 4 + 4 forward units at 3 MiB; hd 80 on the hd-128 kernels, 3 + 3
// pairs at 3 MiB. "ragged" (MLKV_ATTN_L2_EVEN=0) keeps full-budget sections and a smaller last
// one (5 + 1 KV heads, 5 + 5 + 2 hd-256 units). The one-section order (0) matches the reference
// and every other budget matches it bitwise: the numbering moves work between blocks, never the
// order of a sum.
TEST(Attention, L2SectionsMatchOneSection) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KernelFamily family(true);
  struct Case {
    AttnShape s;
    const char* kv_per;
  };
  for (const Case& c : {Case{{3, 700, 6, 2, 64}, nullptr}, Case{{2, 300, 12, 12, 64}, "3"},
                        Case{{2, 1000, 4, 2, 128}, nullptr}, Case{{3, 600, 4, 4, 256}, nullptr},
                        Case{{2, 400, 6, 3, 80}, nullptr}}) {
    const AttnShape& s = c.s;
    if (c.kv_per) ::setenv("MLKV_ATTN_BWD_KV_PER", c.kv_per, 1);
    std::mt19937_64 rng(0x12000000ull + s.hd * 7 + s.H);
    Inputs in(s, rng);
    Forward f(s);
    Backward b(s, rng);
    ::setenv("MLKV_ATTN_L2_MIB", "0", 1);
    f.run(mlkv::cuda::attention_forward, s, in);
    b.run(mlkv::cuda::attention_backward, s, in, f);
    f.check(s, in);
    b.check(s, in);
    const auto out0 = download<uint16_t>(f.out, s.q_elems());
    const auto lse0 = download<float>(f.lse, s.vec_elems());
    const auto dq0 = b.dq_h;
    const auto dk0 = b.dk_h, dv0 = b.dv_h;
    for (const char* mib : {"1", "3", "4", "1 ragged", "3 ragged"}) {
      ::setenv("MLKV_ATTN_L2_MIB", std::string(mib).substr(0, 1).c_str(), 1);
      ::setenv("MLKV_ATTN_L2_EVEN", std::strchr(mib, 'r') ? "0" : "1", 1);
      poison(f.out);
      poison(f.lse);
      f.run(mlkv::cuda::attention_forward, s, in);
      b.run(mlkv::cuda::attention_backward, s, in, f);  // from the same starting dk, dv
      const std::string at = name(s) + " at " + mib + " MiB";
      EXPECT_TRUE(download<uint16_t>(f.out, s.q_elems()) == out0) << "out " << at;
      EXPECT_TRUE(download<float>(f.lse, s.vec_elems()) == lse0) << "lse " << at;
      EXPECT_TRUE(b.dq_h == dq0) << "dq " << at;
      EXPECT_TRUE(b.dk_h == dk0) << "dk " << at;
      EXPECT_TRUE(b.dv_h == dv0) << "dv " << at;
    }
    ::unsetenv("MLKV_ATTN_L2_MIB");
    ::unsetenv("MLKV_ATTN_L2_EVEN");
    ::unsetenv("MLKV_ATTN_BWD_KV_PER");
  }
}

TEST(Attention, RejectsUnsupportedShapes) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  DevBuf buf(1 << 20);
  float* f = buf.as<float>();
  EXPECT_THROW(mlkv::cuda::attention_forward(buf.p, f, buf.p, buf.p, buf.p, 1, 8, 2, 1, 96, nullptr), mlkv::Error);
  EXPECT_THROW(mlkv::cuda::attention_forward(buf.p, f, buf.p, buf.p, buf.p, 1, 8, 3, 2, 64, nullptr), mlkv::Error);
  EXPECT_THROW(mlkv::cuda::attention_backward(buf.p, f, f, buf.p, buf.p, buf.p, buf.p, buf.p, f, 1, 8, 2, 1, 48,
                                              true, nullptr),
               mlkv::Error);
  EXPECT_FALSE(mlkv::cuda::attention_supports_head_dim(96));
  EXPECT_TRUE(mlkv::cuda::attention_supports_head_dim(80));
}

}  // namespace

#else  // CPU-only build

TEST(Attention, NeedsCuda) { GTEST_SKIP() << "built without CUDA"; }

#endif
