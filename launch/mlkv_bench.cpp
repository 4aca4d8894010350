// mlkv-bench: training throughput of one process on one device (issue 6, DESIGN §4).
//
//   mlkv-bench train CONFIG [--set section.key=value ...] [--steps N] [--warmup N]
//
// Builds the config's model (its KV plan, micro_batch, grad_accum, seq_len, recompute) on the
// config's backend with Pythia's initialisation, then times full optimizer steps — grad_accum
// forward+backward micro-steps and one AdamW update with gradient clipping — on random token
// ids drawn from a Zipf law (like text, a few ids are frequent, which the embedding backward
// feels). Prints tokens/s, MFU (FLOPs/token = 6·N_matmul + 12·L·d·T over the named peak,
// log.peak_flops: 989e12 = H100 SXM bf16 dense) and peak device memory, then one RESULT line.
// Set MLKV_CUDA_PROFILE=1 for a per-op time table from the CUDA backend at exit.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/config.h"
#include "core/errors.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/param_layout.h"

namespace mlkv {
namespace {

constexpr const char* kUsage =
    "usage: mlkv-bench train CONFIG [--set section.key=value ...] [--steps N] [--warmup N]\n";

struct Args {
  std::string config;
  std::vector<std::string> sets;
  int steps = 5, warmup = 2;
};

Args parse_args(int argc, char** argv) {
  if (argc < 3 || std::strcmp(argv[1], "train") != 0) throw ConfigError(kUsage);
  Args a;
  a.config = argv[2];
  for (int i = 3; i < argc; ++i) {
    const std::string s = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw ConfigError(s + " needs a value\n" + kUsage);
      return argv[++i];
    };
    if (s == "--set") a.sets.push_back(value());
    else if (s.rfind("--set=", 0) == 0) a.sets.push_back(s.substr(6));
    else if (s == "--steps") a.steps = std::stoi(value());
    else if (s == "--warmup") a.warmup = std::stoi(value());
    else throw ConfigError("unknown argument '" + s + "'\n" + kUsage);
  }
  if (a.steps < 1 || a.warmup < 0) throw ConfigError("--steps must be >= 1 and --warmup >= 0");
  return a;
}

// Token ids with P(rank r) ∝ 1/(r+1), ranks shuffled over the vocabulary.
class ZipfTokens {
 public:
  ZipfTokens(int64_t vocab, uint64_t seed) : rng_(seed), ids_(vocab), cdf_(vocab) {
    for (int64_t i = 0; i < vocab; ++i) ids_[i] = static_cast<int32_t>(i);
    std::shuffle(ids_.begin(), ids_.end(), rng_);
    double s = 0;
    for (int64_t r = 0; r < vocab; ++r) cdf_[r] = (s += 1.0 / double(r + 1));
    for (auto& c : cdf_) c /= s;
  }
  void fill(std::vector<int32_t>& out) {
    std::uniform_real_distribution<double> u(0, 1);
    for (auto& t : out) {
      const auto r = std::lower_bound(cdf_.begin(), cdf_.end(), u(rng_)) - cdf_.begin();
      t = ids_[std::min<int64_t>(r, int64_t(ids_.size()) - 1)];
    }
  }

 private:
  std::mt19937_64 rng_;
  std::vector<int32_t> ids_;
  std::vector<double> cdf_;
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int bench_train(const Args& a) {
  const Config cfg = load_config(a.config, a.sets);
  const ModelSpec spec = cfg.spec();
  const int B = cfg.train.micro_batch, T = cfg.train.seq_len, accum = cfg.train.grad_accum;
  auto be = make_backend(cfg.train.backend, cfg.train.threads);
  Model model(spec, *be, B, T, parse_recompute(cfg.train.recompute));
  {
    std::vector<float> params(model.layout().total());
    init_pythia(params, model.layout(), spec, cfg.train.seed);
    model.set_master(params);
  }
  AdamW opt(*be, model.layout(), cfg.optim);

  // Micro-batches drawn up front, so host sampling stays out of the timed loop.
  ZipfTokens zipf(spec.vocab, cfg.train.seed);
  const int distinct = std::min(accum, 4);
  std::vector<std::vector<int32_t>> rows(distinct, std::vector<int32_t>(size_t(B) * (T + 1)));
  std::vector<std::vector<int32_t>> inputs(distinct), targets(distinct);
  for (int i = 0; i < distinct; ++i) {
    zipf.fill(rows[i]);
    for (int b = 0; b < B; ++b) {
      inputs[i].insert(inputs[i].end(), rows[i].begin() + size_t(b) * (T + 1), rows[i].begin() + size_t(b) * (T + 1) + T);
      targets[i].insert(targets[i].end(), rows[i].begin() + size_t(b) * (T + 1) + 1,
                        rows[i].begin() + size_t(b + 1) * (T + 1));
    }
  }
  const float dloss = 1.0f / (float(B) * T * accum);

  double loss = 0, fb_s = 0, opt_s = 0;
  auto step = [&](bool timed) {
    model.zero_grads();
    double sum = 0;
    const double t0 = now_s();
    for (int m = 0; m < accum; ++m) sum += model.forward_backward(inputs[m % distinct].data(), targets[m % distinct].data(), dloss).sum;
    be->synchronize();
    const double t1 = now_s();
    opt.step(model.master(), model.compute_params(), model.grads(), cfg.optim.lr);
    be->synchronize();
    const double t2 = now_s();
    if (timed) {
      fb_s += t1 - t0;
      opt_s += t2 - t1;
    }
    loss = sum / (double(B) * T * accum);
  };

  std::printf("mlkv-bench train %s\n  model %s, %s, %.1fM params (%.1fM in matmuls)\n", a.config.c_str(),
              cfg.model.name.c_str(), spec.kv.name(spec.heads).c_str(), model.layout().total_params() / 1e6,
              spec.matmul_params() / 1e6);
  std::printf("  micro-batch %d x seq %d, grad_accum %d, recompute %s, backend %s\n", B, T, accum,
              cfg.train.recompute.c_str(), be->name().c_str());
  std::fflush(stdout);
  for (int i = 0; i < a.warmup; ++i) step(false);
  const double start = now_s();
  for (int i = 0; i < a.steps; ++i) step(true);
  const double elapsed = now_s() - start;

  const double tokens = double(B) * T * accum * a.steps;
  const double tok_s = tokens / elapsed;
  const double flops_tok = spec.flops_per_token(T);
  const double peak = cfg.log.peak_flops;
  const double mfu = tok_s * flops_tok / peak;
  const double mem_gib = be->peak_memory_bytes() / double(1 << 30);
  const double act_gib = model.activation_bytes() / double(1 << 30);
  const char* peak_name = std::abs(peak - 989e12) < 1e9 ? " (H100 SXM bf16 dense)" : "";
  std::printf("  step %.1f ms (forward+backward %.1f ms, optimizer %.1f ms), loss %.4f\n", 1e3 * elapsed / a.steps,
              1e3 * fb_s / a.steps, 1e3 * opt_s / a.steps, loss);
  std::printf("  %.0f tokens/s | %.3g FLOPs/token | MFU %.1f%% of %.0f TFLOP/s%s | peak memory %.2f GiB "
              "(activations %.2f GiB)\n",
              tok_s, flops_tok, 100 * mfu, peak / 1e12, peak_name, mem_gib, act_gib);
  std::printf("RESULT config=%s plan=%s B=%d T=%d accum=%d recompute=%s tok_s=%.0f mfu=%.4f peak_tflops=%.0f "
              "peak_mem_gib=%.2f act_gib=%.2f step_ms=%.1f\n",
              a.config.c_str(), spec.kv.name(spec.heads).c_str(), B, T, accum, cfg.train.recompute.c_str(), tok_s,
              mfu, peak / 1e12, mem_gib, act_gib, 1e3 * elapsed / a.steps);
  return kExitOk;
}

}  // namespace
}  // namespace mlkv

int main(int argc, char** argv) {
  try {
    return mlkv::bench_train(mlkv::parse_args(argc, argv));
  } catch (const mlkv::Error& e) {
    std::fprintf(stderr, "mlkv-bench: %s\n", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mlkv-bench: %s\n", e.what());
    return mlkv::kExitFailure;
  }
}
