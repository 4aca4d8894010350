// Single-process checks of the pieces distributed training is built from: tensor-parallel
// layouts tile every full tensor exactly (replicas agree), ZeRO-1 bucket plans cover the buffer
// once with aligned pieces, restricted layouts, topology arithmetic and launcher detection.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <map>

#include "core/errors.h"
#include "core/kv_plan.h"
#include "core/param_layout.h"
#include "core/rng.h"
#include "parallel/dp_plan.h"
#include "parallel/topology.h"
#include "tests/core/test_util.h"

namespace mlkv {
namespace {

ModelSpec spec_of(int layers, int d, int heads, int kv_heads, std::vector<int> owners, int64_t vocab = 64) {
  return test::tiny_spec(layers, d, heads, kv_heads, std::move(owners), vocab);
}

struct Plan {
  const char* name;
  ModelSpec spec;
};

std::vector<Plan> plans() {
  return {{"mha", spec_of(2, 32, 4, 4, {0, 1})},
          {"gqa", spec_of(2, 32, 4, 2, {0, 1})},
          {"mlkv_shared_split", spec_of(4, 32, 4, 4, {0, 2})},
          {"mlkv6_like", spec_of(4, 32, 4, 1, {0, 2})},
          {"mlkv1", spec_of(3, 32, 4, 1, {0})}};
}

// Every element of every full tensor is covered by some tp rank, and every rank that holds an
// element was handed the same value: slicing then placing back is the identity.
TEST(TensorParallelLayout, SlicesTileEveryFullTensor) {
  for (const Plan& p : plans())
    for (int tp : {1, 2, 4}) {
      const ParamLayout full(p.spec);
      std::vector<float> values(full.total());
      for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i % 9973) + 0.5f;
      std::vector<float> rebuilt(full.total(), -1.0f);
      int64_t local_params = 0;
      for (int r = 0; r < tp; ++r) {
        const ParamLayout lay(p.spec, tp, r);
        ASSERT_EQ(lay.views().size(), full.views().size());
        local_params += lay.total_params();
        for (const ParamView& v : lay.views()) {
          const ParamView& f = full.at(v.name);
          ASSERT_EQ(v.tp.full_shape, f.shape) << p.name << " tp " << tp << " " << v.name;
          std::vector<float> local(v.numel);
          slice_from_full(local.data(), values.data() + f.offset, v);
          place_into_full(rebuilt.data() + f.offset, local.data(), v);
        }
      }
      for (const ParamView& f : full.views())
        for (int64_t i = 0; i < f.numel; ++i)
          ASSERT_EQ(rebuilt[f.offset + i], values[f.offset + i]) << p.name << " tp " << tp << " " << f.name << "[" << i << "]";
      // Σ local params − the extra copies of replicated elements = the full model.
      int64_t extra = 0;
      for (int r = 0; r < tp; ++r) {
        const ParamLayout lay(p.spec, tp, r);
        for (const ParamView& v : lay.views())
          if (v.tp.copies > 1) extra += v.tp.rep_count * (v.tp.copies - 1) / v.tp.copies;
      }
      EXPECT_EQ(local_params - extra, full.total_params()) << p.name << " tp " << tp;
    }
}

TEST(TensorParallelLayout, KvHeadsSplitOrReplicated) {
  const ModelSpec gqa = spec_of(2, 32, 4, 2, {0, 1});
  const ParamLayout split(gqa, 2, 1);
  EXPECT_EQ(split.local_heads(), 2);
  EXPECT_EQ(split.local_kv_heads(), 1);
  EXPECT_EQ(split.first_kv_head(), 1);
  EXPECT_EQ(split.kv_copies(), 1);
  const ParamLayout repl(gqa, 4, 3);  // 4 ranks, 2 KV heads: ranks 2, 3 share head 1
  EXPECT_EQ(repl.local_heads(), 1);
  EXPECT_EQ(repl.local_kv_heads(), 1);
  EXPECT_EQ(repl.first_kv_head(), 1);
  EXPECT_EQ(repl.kv_copies(), 2);
  const ParamView& qkv = repl.at("layers.0.attn.qkv.weight");
  EXPECT_TRUE(qkv.tp.partial_grads);
  EXPECT_EQ(qkv.tp.rep_count, 2 * 8 * 32);
  // Reader layers hold no K/V projection on any rank.
  const ModelSpec mlkv = spec_of(4, 32, 4, 1, {0, 2});
  for (int r = 0; r < 4; ++r) {
    const ParamLayout lay(mlkv, 4, r);
    EXPECT_EQ(lay.at("layers.1.attn.qkv.weight").shape[0], 8) << "rank " << r;
    EXPECT_EQ(lay.at("layers.2.attn.qkv.weight").shape[0], 3 * 8) << "rank " << r;
  }
  EXPECT_THROW(ParamLayout(spec_of(2, 48, 6, 6, {0, 1}), 4, 0), ConfigError);  // 4 does not divide 6 heads
  EXPECT_THROW(ParamLayout(spec_of(2, 32, 4, 4, {0, 1}, 66), 4, 0), ConfigError);  // nor the vocabulary
}

TEST(TensorParallelLayout, InitIsTheSameModelForEveryTp) {
  const ModelSpec s = spec_of(2, 32, 4, 1, {0});
  const ParamLayout full(s);
  std::vector<float> ref;
  init_pythia(ref, full, s, 42);
  const ParamLayout lay(s, 2, 1);
  std::vector<float> part;
  init_pythia(part, lay, s, 42);
  for (const ParamView& v : lay.views()) {
    std::vector<float> expect(v.numel);
    slice_from_full(expect.data(), ref.data() + full.at(v.name).offset, v);
    for (int64_t i = 0; i < v.numel; ++i) ASSERT_EQ(part[v.offset + i], expect[i]) << v.name;
  }
  for (int c = 0; c < s.d_model; ++c) EXPECT_EQ(part[lay.embed_scratch_offset() + c], 0.0f);
}

// The init fills tensors in parallel from skipped-ahead generators: it must give exactly the
// numbers of one Rng walked once through the decayed tensors in view order (two draws a normal).
TEST(PythiaInit, ParallelFillEqualsOneSequentialStream) {
  const ModelSpec s = spec_of(3, 32, 4, 2, {0, 2});
  const ParamLayout lay(s);
  std::vector<float> got;
  init_pythia(got, lay, s, 7);
  Rng rng(7);
  int decayed = 0;
  for (const ParamView& v : lay.views()) {
    if (!v.decay) continue;
    ++decayed;
    const bool out_proj = v.name.ends_with("attn.dense.weight") || v.name.ends_with("mlp.down.weight");
    const double std = out_proj ? 2.0 / (s.layers * std::sqrt(32.0)) : std::sqrt(2.0 / (5.0 * 32));
    for (int64_t i = 0; i < v.numel; ++i)
      ASSERT_EQ(got[v.offset + i], static_cast<float>(std * rng.normal())) << v.name << " element " << i;
  }
  EXPECT_GT(decayed, 4);
  Rng a(99);
  for (int i = 0; i < 5; ++i) a.next_u64();
  EXPECT_EQ(Rng::skipped(99, 5).next_u64(), a.next_u64());
}

TEST(DpPlan, PiecesCoverTheBufferOnceAndStayAligned) {
  for (int dp : {1, 2, 3, 4}) {
    const int64_t P = parallel::DpPlan::buffer_multiple(dp) * 37;
    const parallel::DpPlan plan(P, dp, 64.0 * 4 * 5 / (1 << 20));  // ~5 units per bucket
    std::vector<int> owner(P, -1);
    for (int r = 0; r < dp; ++r) {
      int64_t local = 0;
      for (auto [a, b] : plan.shard_ranges(r)) {
        EXPECT_EQ(a % 64, 0);
        for (int64_t i = a; i < b; ++i) {
          ASSERT_EQ(owner[i], -1) << "element " << i << " owned twice";
          owner[i] = r;
        }
        const auto spans = plan.spans(r, a, b);
        ASSERT_EQ(spans.size(), 1u);
        EXPECT_EQ(spans[0].local, local);
        local += b - a;
      }
      EXPECT_EQ(local, plan.shard_elems());
    }
    for (int64_t i = 0; i < P; ++i) ASSERT_GE(owner[i], 0);
    // Buckets go top-down and tile [0, P).
    int64_t hi = P;
    for (const auto& b : plan.buckets()) {
      EXPECT_EQ(b.hi, hi);
      EXPECT_EQ((b.hi - b.lo) % (64 * dp), 0);
      hi = b.lo;
    }
    EXPECT_EQ(hi, 0);
  }
  EXPECT_THROW(parallel::DpPlan(64 * 3, 2, 1.0), Error);
}

TEST(RestrictedLayout, PacksTheIntersectingPieces) {
  const ModelSpec s = spec_of(2, 32, 4, 4, {0, 1});
  const ParamLayout full(s);
  const int64_t mid = full.at("layers.0.mlp.up.weight").offset + 100;
  const ParamLayout r = ParamLayout::restricted(full, {{0, 64}, {mid, mid + 200}});
  EXPECT_EQ(r.total(), 264);
  ASSERT_EQ(r.views().size(), 2u);
  EXPECT_EQ(r.views()[0].name, "embed_in.weight");
  EXPECT_EQ(r.views()[1].name, "layers.0.mlp.up.weight");
  EXPECT_EQ(r.views()[1].offset, 64);
  EXPECT_EQ(r.views()[1].numel, 200);
  EXPECT_TRUE(r.views()[1].decay);
}

TEST(Topology, TensorParallelIsInnermost) {
  const auto t = parallel::make_topology(8, 5, 1, 2);
  EXPECT_EQ(t.dp, 4);
  EXPECT_EQ(t.dp_rank, 2);
  EXPECT_EQ(t.tp_rank, 1);
  EXPECT_EQ(t.world_rank_of(2, 1), 5);
  EXPECT_EQ(t.describe(), "rank 5/8 (dp 2/4, tp 1/2, local 1)");
  EXPECT_THROW(parallel::make_topology(6, 0, 0, 4), ConfigError);
}

TEST(Topology, DetectsLaunchers) {
  // This test owns these variables; restore whatever mpirun set (the test may run under it).
  const char* names[] = {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "PMIX_RANK",
                         "PMIX_SIZE", "PMIX_LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
                         "PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"};
  std::map<std::string, std::string> saved;
  for (const char* n : names)
    if (const char* v = std::getenv(n)) saved[n] = v;
  for (const char* n : names) unsetenv(n);
  EXPECT_FALSE(parallel::detect_launch().distributed);
  setenv("SLURM_NTASKS", "8", 1);
  setenv("SLURM_PROCID", "6", 1);
  setenv("SLURM_LOCALID", "2", 1);
  auto li = parallel::detect_launch();
  EXPECT_TRUE(li.distributed);
  EXPECT_EQ(li.world_rank, 6);
  EXPECT_EQ(li.local_rank, 2);
  EXPECT_EQ(li.source, "SLURM_*");
  setenv("OMPI_COMM_WORLD_SIZE", "4", 1);  // mpirun inside an allocation: Open MPI's names win
  setenv("OMPI_COMM_WORLD_RANK", "3", 1);
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
  li = parallel::detect_launch();
  EXPECT_EQ(li.world_size, 4);
  EXPECT_EQ(li.world_rank, 3);
  EXPECT_EQ(li.local_rank, 1);
  EXPECT_EQ(parallel::local_rank(), 1);
  for (const char* n : names) unsetenv(n);
  for (auto& [n, v] : saved) setenv(n.c_str(), v.c_str(), 1);
}

}  // namespace
}  // namespace mlkv
