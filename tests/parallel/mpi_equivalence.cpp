// Multi-rank equivalence tests, run under `mpirun -np 2` and `-np 4` (CTest label `parallel`):
// a distributed run must equal the single-process run of the same global batch.
//   DataParallel:   dp = world (ZeRO-1 with several buckets, and plain all-reduce) vs dp = 1
//   TensorParallel: tp = 2 (and 4) vs tp = 1 for MHA, GQA, MLKV-6-like and MLKV-1 plans, with
//                   the rest of the world as DP (np 4: dp 2 × tp 2); replicated tensors must stay
//                   bitwise identical across tp ranks
//   Checkpoint:     state gathered to full tensors at one layout, scattered into another, and the
//                   run continues exactly as an uninterrupted one
// Every rank computes the single-process reference itself (the models are tiny). Gradient
// clipping is active, so the global norm across shards and replicas is checked as well.
// MLKV_TEST_BACKEND=cuda runs the same tests on GPUs through NCCL, with bf16 tolerances.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstring>
#include <cstdlib>
#include <string>

#include "core/model.h"
#include "parallel/context.h"
#include "parallel/distributed_context.h"
#include "parallel/mpi_communicator.h"
#include "parallel/topology.h"
#include "train_loop.h"

namespace mlkv {
namespace {

Backend* g_backend = nullptr;
bool g_cuda = false;
int g_world = 1, g_rank = 0;

struct PlanDef {
  const char* name;
  int layers, heads, kv_heads;
  std::vector<int> owners;
};
void PrintTo(const PlanDef& p, std::ostream* os) { *os << p.name; }

// MHA-144, GQA-48, MLKV-6 and MLKV-1 in miniature: all own / fewer KV heads / one KV head shared
// by layer pairs / one for the whole model.
const PlanDef kMha{"mha", 2, 4, 4, {0, 1}};
const PlanDef kGqa{"gqa", 2, 4, 2, {0, 1}};
const PlanDef kMlkv6{"mlkv6_like", 4, 4, 1, {0, 2}};
const PlanDef kMlkv1{"mlkv1", 3, 4, 1, {0}};

Config make_config(const PlanDef& p, int tp, bool zero1, double bucket_mb) {
  Config c;
  c.model.layers = p.layers;
  c.model.heads = p.heads;
  c.model.d_model = g_cuda ? 64 * p.heads : 8 * p.heads;  // head dim 64 on GPUs, 8 on the CPU
  c.model.vocab_size = g_cuda ? 512 : 64;
  c.model.max_seq_len = 64;
  c.kv.kv_heads = p.kv_heads;
  c.kv.owners = p.owners;
  c.train.backend = g_cuda ? "cuda" : "cpu";
  c.optim.lr = 3e-3;
  c.optim.warmup_steps = 1;
  c.optim.grad_clip = 0.05;  // active: the norm over shards and replicas decides every update
  // Adam's m/(√v + eps) amplifies the last bits of a gradient near 1e-8 into an lr-sized step, so
  // with Pythia's eps two correct runs differ by ~lr wherever a gradient is that small. A larger
  // eps keeps the weights as well-conditioned a witness of the gradients as m and v are.
  c.optim.eps = 1e-4;
  c.parallel.tp = tp;
  c.parallel.zero1 = zero1;
  c.parallel.bucket_mb = bucket_mb;
  c.parallel.comm_timeout_s = 120;
  return c;
}

test::LoopConfig loop_config() {
  test::LoopConfig lc;
  lc.global_batch = 4;
  lc.micro_batch = 1;
  lc.seq_len = g_cuda ? 64 : 8;
  lc.total_steps = 20;
  return lc;
}

// Full-model start point: weights ~N(0, s), LayerNorm weights ~1 + N(0, s); nothing 0 or 1.
// s = 0.3 makes the fp32 CPU runs sensitive to every term; on GPUs, bf16 needs a model as
// well-conditioned as a real one (s = 0.02, Pythia's scale), or rounding differences between
// layouts grow into different trajectories within a few clipped steps.
std::vector<float> initial_full(const ModelSpec& spec) {
  const ParamLayout full(spec);
  std::vector<float> p(full.total(), 0.0f);
  const double s = g_cuda ? 0.02 : 0.3;
  Rng rng(77);
  for (const ParamView& v : full.views()) {
    const bool ln_w = v.name.find("ln") != std::string::npos && v.name.ends_with(".weight");
    for (int64_t i = 0; i < v.numel; ++i) p[v.offset + i] = static_cast<float>((ln_w ? 1.0 : 0.0) + s * rng.normal());
  }
  return p;
}

struct Trace {
  std::vector<test::StepLog> log;
  std::vector<float> master, m, v;  // full (tp = 1) layout; from a distributed run: root only
  int64_t adam_t = 0;
};

Trace reference(const Config& cfg, int steps) {
  parallel::Context ctx;  // one process
  const test::LoopConfig lc = loop_config();
  Model model(cfg.spec(), *g_backend, lc.micro_batch, lc.seq_len);
  auto opt = ctx.make_optimizer(model, cfg.optim);
  model.set_master(initial_full(cfg.spec()));
  Trace t;
  for (int s = 0; s < steps; ++s) t.log.push_back(test::train_step(ctx, model, *opt, cfg, lc, s));
  t.master = model.get_master();
  t.m = opt->get_m();
  t.v = opt->get_v();
  return t;
}

// Steps [first, first + steps) at cfg's layout, starting from `from` (full state) or from the
// initial weights.
// own_optimizer: the model and AdamW built as a trainer unaware of the context would (no
// model_parallel(), no make_optimizer): the context must fall back to all-reduce, unsharded.
Trace distributed(const Config& cfg, int first, int steps, const Trace* from, bool own_optimizer = false) {
  auto ctx = parallel::make_context(cfg, *g_backend);
  const test::LoopConfig lc = loop_config();
  Model model(cfg.spec(), *g_backend, lc.micro_batch, lc.seq_len, Recompute::none,
              own_optimizer ? ModelParallel{} : ctx->model_parallel());
  // The LM head in uneven chunks of 3 rows (Model::head_loss): the chunked vocab-parallel
  // cross-entropy against the reference's all-rows-at-once head.
  model.set_head_chunk_rows(3);
  auto opt = own_optimizer ? std::make_unique<AdamW>(*g_backend, model.layout(), cfg.optim)
                           : ctx->make_optimizer(model, cfg.optim);
  if (from) {
    // A checkpoint's content: every rank reads the same full tensors (here: root's, broadcast).
    Trace full = *from;
    for (auto* vec : {&full.master, &full.m, &full.v}) {
      int64_t n = static_cast<int64_t>(vec->size());
      MPI_Bcast(&n, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
      vec->resize(n);
      MPI_Bcast(vec->data(), static_cast<int>(n), MPI_FLOAT, 0, MPI_COMM_WORLD);
    }
    MPI_Bcast(&full.adam_t, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
    ctx->scatter_full(model, *opt, parallel::StateKind::master, full.master);
    ctx->scatter_full(model, *opt, parallel::StateKind::adam_m, full.m);
    ctx->scatter_full(model, *opt, parallel::StateKind::adam_v, full.v);
    opt->set_t(full.adam_t);
  } else {
    ctx->scatter_full(model, *opt, parallel::StateKind::master, initial_full(cfg.spec()));
  }
  Trace t;
  for (int s = first; s < first + steps; ++s) t.log.push_back(test::train_step(*ctx, model, *opt, cfg, lc, s));
  t.master = ctx->gather_full(model, *opt, parallel::StateKind::master);
  t.m = ctx->gather_full(model, *opt, parallel::StateKind::adam_m);
  t.v = ctx->gather_full(model, *opt, parallel::StateKind::adam_v);
  t.adam_t = opt->t();
  return t;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(static_cast<double>(a[i]) - b[i]));
  return m;
}

// Losses and norms on every rank; weights and moments on the root (where the gather lands).
void expect_equal(const Trace& got, const Trace& want, double tol, const std::string& what) {
  const double loss_tol = g_cuda ? 2e-2 : tol, norm_tol = g_cuda ? 5e-2 : 10 * tol;
  ASSERT_EQ(got.log.size(), want.log.size());
  for (size_t s = 0; s < got.log.size(); ++s) {
    EXPECT_NEAR(got.log[s].loss, want.log[s].loss, loss_tol * std::max(1.0, std::abs(want.log[s].loss)))
        << what << " step " << s;
    EXPECT_NEAR(got.log[s].grad_norm, want.log[s].grad_norm, norm_tol * std::max(1.0, want.log[s].grad_norm))
        << what << " step " << s;
  }
  if (g_rank != 0) return;
  const double w_tol = g_cuda ? 5e-3 : tol;
  const double dm = max_abs_diff(got.master, want.master), dmo = max_abs_diff(got.m, want.m),
               dv = max_abs_diff(got.v, want.v);
  EXPECT_LE(dm, w_tol) << what << ": weights";
  EXPECT_LE(dmo, w_tol) << what << ": Adam m";
  EXPECT_LE(dv, w_tol) << what << ": Adam v";
  std::printf("[ %s ] max |diff| weights %.3g, m %.3g, v %.3g; last loss %.6f vs %.6f\n", what.c_str(), dm, dmo, dv,
              got.log.back().loss, want.log.back().loss);
}

const double kDpTol = 1e-6, kTpTol = 1e-5;

TEST(DataParallel, Zero1WithBucketsEqualsOneProcess) {
  const Config cfg = make_config(kMlkv6, 1, true, 0.004);  // ~1000 floats a bucket: several buckets
  expect_equal(distributed(cfg, 0, 3, nullptr), reference(cfg, 3), kDpTol, "dp" + std::to_string(g_world) + " zero1");
}

TEST(DataParallel, AllReduceWithoutZeroEqualsOneProcess) {
  const Config cfg = make_config(kGqa, 1, false, 25.0);
  expect_equal(distributed(cfg, 0, 3, nullptr), reference(cfg, 3), kDpTol, "dp" + std::to_string(g_world) + " allreduce");
}

TEST(DataParallel, TrainerBuiltOptimizerStillReducesCorrectly) {
  const Config cfg = make_config(kMha, 1, true, 0.004);
  expect_equal(distributed(cfg, 0, 3, nullptr, true), reference(cfg, 3), kDpTol, "dp" + std::to_string(g_world) + " own optimizer");
}

TEST(DataParallel, OptimizerStateIsSharded) {
  const Config cfg = make_config(kMha, 1, true, 0.004);
  auto ctx = parallel::make_context(cfg, *g_backend);
  Model model(cfg.spec(), *g_backend, 1, loop_config().seq_len, Recompute::none, ctx->model_parallel());
  auto opt = ctx->make_optimizer(model, cfg.optim);
  auto* dc = dynamic_cast<parallel::DistributedContext*>(ctx.get());
  ASSERT_NE(dc, nullptr);
  const int64_t full = 3 * model.layout().total() * 4, mine = dc->optimizer_state_bytes();
  EXPECT_LE(mine, full / g_world + 3 * 4 * parallel::DpPlan::buffer_multiple(g_world)) << "ZeRO-1 shard too large";
}

class TensorParallel : public ::testing::TestWithParam<PlanDef> {};

TEST_P(TensorParallel, Tp2EqualsTp1) {
  const Config cfg = make_config(GetParam(), 2, true, 0.004);
  const std::string what = std::string(GetParam().name) + " tp2 x dp" + std::to_string(g_world / 2);
  expect_equal(distributed(cfg, 0, 3, nullptr), reference(cfg, 3), kTpTol, what);
}

TEST_P(TensorParallel, Tp4EqualsTp1) {
  if (g_world % 4) GTEST_SKIP() << "needs 4 ranks";
  const Config cfg = make_config(GetParam(), 4, false, 25.0);
  expect_equal(distributed(cfg, 0, 3, nullptr), reference(cfg, 3), kTpTol, std::string(GetParam().name) + " tp4");
}

INSTANTIATE_TEST_SUITE_P(Plans, TensorParallel, ::testing::Values(kMha, kGqa, kMlkv6, kMlkv1),
                         [](const auto& info) { return std::string(info.param.name); });

// LayerNorms, row-parallel biases and replicated K/V heads must not drift apart across tp ranks.
TEST(TensorParallelReplicas, StayBitwiseIdentical) {
  const int tp = g_world >= 4 ? 4 : 2;
  const Config cfg = make_config(kMlkv1, tp, true, 0.004);
  auto ctx = parallel::make_context(cfg, *g_backend);
  const test::LoopConfig lc = loop_config();
  Model model(cfg.spec(), *g_backend, lc.micro_batch, lc.seq_len, Recompute::none, ctx->model_parallel());
  auto opt = ctx->make_optimizer(model, cfg.optim);
  ctx->scatter_full(model, *opt, parallel::StateKind::master, initial_full(cfg.spec()));
  for (int s = 0; s < 3; ++s) test::train_step(*ctx, model, *opt, cfg, lc, s);
  // The compute copy is what the next forward reads; download the replicated parts of it.
  std::vector<float> mine;
  const int ab = g_backend->act_bytes();
  for (const ParamView& v : model.layout().views()) {
    if (v.tp.copies < 2) continue;
    std::vector<char> raw(v.tp.rep_count * ab);
    g_backend->download(raw.data(), static_cast<char*>(model.compute_params()) + (v.offset + v.tp.rep_begin) * ab,
                        raw.size());
    const size_t at = mine.size();
    mine.resize(at + raw.size() / 4 + 1);
    std::memcpy(mine.data() + at, raw.data(), raw.size());
  }
  // Compare with tp rank 0 of the same group, bit for bit (replicated K/V: with its copy partner).
  const auto& topo = ctx->topo();
  MPI_Comm group;
  MPI_Comm_split(MPI_COMM_WORLD, topo.dp_rank, topo.tp_rank, &group);
  std::vector<float> first = mine;
  MPI_Bcast(first.data(), static_cast<int>(first.size()), MPI_FLOAT, 0, group);
  MPI_Comm_free(&group);
  // K/V copies are shared by tp/kv_heads ranks: with one KV head that is the whole tp group.
  EXPECT_EQ(std::memcmp(first.data(), mine.data(), mine.size() * sizeof(float)), 0)
      << "replicated parameters differ between tp rank 0 and tp rank " << topo.tp_rank;
}

// Save at one layout, resume at others: dp·tp = world throughout, but how it splits changes.
TEST(Checkpoint, ResumeAcrossLayouts) {
  std::vector<std::pair<int, bool>> layouts;  // (tp, zero1), 2 steps each
  if (g_world == 4) layouts = {{2, true}, {1, true}, {4, false}};
  else layouts = {{2, false}, {1, true}, {2, true}};
  const int steps_each = 2;
  const Config ref_cfg = make_config(kGqa, 1, true, 0.004);
  const Trace want = reference(ref_cfg, steps_each * static_cast<int>(layouts.size()));
  Trace state, got;
  for (size_t i = 0; i < layouts.size(); ++i) {
    const Config cfg = make_config(kGqa, layouts[i].first, layouts[i].second, 0.004);
    Trace t = distributed(cfg, static_cast<int>(i) * steps_each, steps_each, i == 0 ? nullptr : &state);
    got.log.insert(got.log.end(), t.log.begin(), t.log.end());
    state = t;
  }
  got.master = state.master;
  got.m = state.m;
  got.v = state.v;
  expect_equal(got, want, kTpTol, "resume tp2->dp->tp");
}

}  // namespace
}  // namespace mlkv

// Ranks other than 0 print only their failures, each line tagged with the rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", mlkv::g_rank, r.file_name() ? r.file_name() : "?",
                   r.line_number(), r.summary());
  }
  void OnTestEnd(const ::testing::TestInfo& t) override {
    if (t.result()->Failed())
      std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", mlkv::g_rank, t.test_suite_name(), t.name());
  }
};

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  mlkv::parallel::ensure_mpi_initialized();
  MPI_Comm_size(MPI_COMM_WORLD, &mlkv::g_world);
  MPI_Comm_rank(MPI_COMM_WORLD, &mlkv::g_rank);
  if (mlkv::g_rank != 0) {  // one rank reports; failures elsewhere still fail the exit code
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter);
  }
  const char* which = std::getenv("MLKV_TEST_BACKEND");
  mlkv::g_cuda = which && std::string(which) == "cuda";
  std::unique_ptr<mlkv::Backend> be =
      mlkv::make_backend(mlkv::g_cuda ? "cuda" : "cpu", 1, mlkv::g_cuda ? mlkv::parallel::local_rank() : 0);
  mlkv::g_backend = be.get();
  int rc = RUN_ALL_TESTS(), worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  mlkv::g_backend = nullptr;
  be.reset();
  return worst;
}
