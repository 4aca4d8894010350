// mlkv-bench-parallel: throughput, scaling and loss tracking of the distributed step (issue 7).
//
//   mpirun -np N mlkv-bench-parallel CONFIG [--set k=v ...] [--steps S] [--warmup W]
//                                           [--pattern] [--losses] [--fast-init]
//
// Builds the config's model with this rank's layout (parallel.tp, ZeRO-1), runs W + S optimizer
// steps of micro_batch × grad_accum sequences per DP rank (the test loop of train_loop.h: the
// same global batch for any dp, so runs at different layouts see identical data), and prints
// on rank 0 one RESULT line: tokens/s (all GPUs and per GPU), MFU (DESIGN §4 FLOPs over
// log.peak_flops), mean step time, optimizer-state bytes per rank, peak device memory.
// --losses prints every step's loss and gradient norm (1-GPU vs 2-GPU tracking); --pattern trains
// on learnable rows; --fast-init fills weights with cheap noise (throughput runs of big models,
// where Pythia's init would cost more host time than the benchmark).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/config.h"
#include "core/errors.h"
#include "core/model.h"
#include "parallel/context.h"
#include "parallel/distributed_context.h"
#include "parallel/topology.h"
#include "train_loop.h"

namespace mlkv {
namespace {

struct Args {
  std::string config;
  std::vector<std::string> sets;
  int steps = 5, warmup = 2;
  bool pattern = false, losses = false, fast_init = false;
};

Args parse(int argc, char** argv) {
  if (argc < 2) throw ConfigError("usage: mlkv-bench-parallel CONFIG [--set k=v] [--steps S] [--warmup W] "
                                  "[--pattern] [--losses] [--fast-init]");
  Args a;
  a.config = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string s = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw ConfigError(s + " needs a value");
      return argv[++i];
    };
    if (s == "--set") a.sets.push_back(value());
    else if (s == "--steps") a.steps = std::stoi(value());
    else if (s == "--warmup") a.warmup = std::stoi(value());
    else if (s == "--pattern") a.pattern = true;
    else if (s == "--losses") a.losses = true;
    else if (s == "--fast-init") a.fast_init = true;
    else throw ConfigError("unknown argument '" + s + "'");
  }
  return a;
}

int run(int argc, char** argv) {
  const Args a = parse(argc, argv);
  const Config cfg = load_config(a.config, a.sets);
  auto be = make_backend(cfg.train, parallel::local_rank());
  auto ctx = parallel::make_context(cfg, *be);
  const auto& topo = ctx->topo();
  const ModelSpec spec = cfg.spec();
  Model model(spec, *be, cfg.train.micro_batch, cfg.train.seq_len, parse_recompute(cfg.train.recompute),
              ctx->model_parallel());
  auto opt = ctx->make_optimizer(model, cfg.optim);
  std::vector<float> w;
  if (a.fast_init) {  // LayerNorm weights 1, the rest small deterministic noise (not Pythia's)
    w.assign(model.layout().total(), 0.0f);
    uint64_t x = 0x9E3779B97F4A7C15ull ^ static_cast<uint64_t>(topo.tp_rank);
    for (const ParamView& v : model.layout().views()) {
      const bool ln_w = v.name.find("ln") != std::string::npos && v.name.ends_with(".weight");
      for (int64_t i = 0; i < v.numel; ++i) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        w[v.offset + i] = ln_w ? 1.0f : v.decay ? 0.02f * (static_cast<float>(x >> 40) / 16777216.0f - 0.5f) : 0.0f;
      }
    }
  } else {
    init_pythia(w, model.layout(), spec, cfg.train.seed);
  }
  model.set_master(w);
  w = {};

  test::LoopConfig lc;
  lc.micro_batch = cfg.train.micro_batch;
  lc.global_batch = cfg.train.micro_batch * cfg.train.grad_accum * topo.dp;
  lc.seq_len = cfg.train.seq_len;
  lc.data_seed = cfg.train.seed;
  lc.total_steps = cfg.train.steps;
  lc.pattern = a.pattern;
  double timed = 0;
  for (int s = 0; s < a.warmup + a.steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    const test::StepLog log = test::train_step(*ctx, model, *opt, cfg, lc, s);
    be->synchronize();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s >= a.warmup) timed += dt;
    if (a.losses && ctx->is_root())
      std::printf("step %d loss %.6f gnorm %.6f ms %.1f\n", s, log.loss, log.grad_norm, dt * 1e3);
  }
  const double step_s = timed / std::max(1, a.steps);
  const double tokens = static_cast<double>(lc.global_batch) * lc.seq_len;
  const double tps = tokens / step_s, flops = spec.flops_per_token(lc.seq_len);
  auto* dc = dynamic_cast<parallel::DistributedContext*>(ctx.get());
  const int64_t opt_bytes = dc ? dc->optimizer_state_bytes() : 3 * model.layout().total() * 4;
  double peak = static_cast<double>(be->peak_memory_bytes());
  peak = ctx->all_reduce_sum(peak) / topo.dp;  // mean over DP ranks (tp ranks hold the same)
  if (ctx->is_root())
    std::printf("RESULT config=%s world=%d dp=%d tp=%d zero1=%d mb=%d accum=%d seq=%d step_ms=%.1f tokens_per_s=%.0f "
                "per_gpu=%.0f mfu=%.1f%% (peak %.0f TFLOP/s) opt_state_bytes_per_rank=%lld peak_mem_gib=%.2f\n",
                a.config.c_str(), topo.world_size, topo.dp, topo.tp, cfg.parallel.zero1 ? 1 : 0, cfg.train.micro_batch,
                cfg.train.grad_accum, lc.seq_len, step_s * 1e3, tps, tps / topo.world_size,
                100.0 * tps * flops / (cfg.log.peak_flops * topo.world_size), cfg.log.peak_flops / 1e12,
                static_cast<long long>(opt_bytes), peak / (1 << 30));
  return 0;
}

}  // namespace
}  // namespace mlkv

int main(int argc, char** argv) {
  try {
    return mlkv::run(argc, argv);
  } catch (const mlkv::Error& e) {
    std::fprintf(stderr, "mlkv-bench-parallel: %s\n", e.what());
    mlkv::parallel::abort_job(e.exit_code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mlkv-bench-parallel: %s\n", e.what());
    mlkv::parallel::abort_job(mlkv::kExitFailure);
  }
}
