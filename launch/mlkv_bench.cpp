// mlkv-bench: training throughput of one process on one device (issue 6, DESIGN §4).
//
//   mlkv-bench train CONFIG [--set section.key=value ...] [--steps N] [--warmup N]
//   mlkv-bench ops   CONFIG [--set ...]   every backend op at the config's shapes, alone: median
//                                          µs and TFLOP/s (matmuls) or GB/s (minimal bytes moved)
//   mlkv-bench decode CONFIG_OR_CKPT [--memory-budget-gib G] [--context 2048] [--steps N] [--csv FILE]
//                     [--export-hf DIR]    decode throughput against batch with the shared KV cache
//                                          (issue 13): see bench_decode below
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
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/backend.h"
#include "core/checkpoint.h"
#include "core/config.h"
#include "core/convert.h"
#include "core/decode.h"
#include "core/errors.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/param_layout.h"

namespace mlkv {
namespace {

constexpr const char* kUsage =
    "usage: mlkv-bench train CONFIG [--set section.key=value ...] [--steps N] [--warmup N]\n"
    "       mlkv-bench ops CONFIG [--set section.key=value ...]\n"
    "       mlkv-bench decode CONFIG_OR_CKPT [--set ...] [--memory-budget-gib G] [--context T] [--steps N]\n"
    "                  [--warmup N] [--max-batch B] [--csv FILE] [--export-hf DIR]\n";

struct Args {
  std::string command;
  std::string config;
  std::vector<std::string> sets;
  int steps = 5, warmup = 2;
  double budget_gib = 16;  // decode: weights + cache + workspace must fit
  int context = 2048, max_batch = 1 << 22;
  std::string csv;
  std::string export_hf;  // decode: also write the benched weights as an HF directory (the peer's model)
};

Args parse_args(int argc, char** argv) {
  if (argc < 3 || (std::strcmp(argv[1], "train") != 0 && std::strcmp(argv[1], "ops") != 0 &&
                   std::strcmp(argv[1], "decode") != 0))
    throw ConfigError(kUsage);
  Args a;
  a.command = argv[1];
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
    else if (s == "--memory-budget-gib") a.budget_gib = std::stod(value());
    else if (s == "--context") a.context = std::stoi(value());
    else if (s == "--max-batch") a.max_batch = std::stoi(value());
    else if (s == "--csv") a.csv = value();
    else if (s == "--export-hf") a.export_hf = value();
    else throw ConfigError("unknown argument '" + s + "'\n" + kUsage);
  }
  if (a.steps < 1 || a.warmup < 0) throw ConfigError("--steps must be >= 1 and --warmup >= 0");
  if (!(a.budget_gib > 0) || a.context < a.steps + a.warmup + 2 || a.max_batch < 1)
    throw ConfigError("--memory-budget-gib must be > 0, --context must exceed --steps + --warmup + 1, "
                      "--max-batch >= 1");
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
  auto be = make_backend(cfg.train);
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
  std::printf("  micro-batch %d x seq %d, grad_accum %d, recompute %s, backend %s\n  attention %s\n", B, T, accum,
              cfg.train.recompute.c_str(), be->name().c_str(), be->attention_plan(spec.head_dim(), spec.heads, spec.kv.kv_heads).c_str());
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
  // The path attention took (after the run: "auto" may have fallen back to ours), its first word.
  const std::string attention = be->attention_plan(spec.head_dim(), spec.heads, spec.kv.kv_heads);
  std::printf("RESULT config=%s plan=%s B=%d T=%d accum=%d recompute=%s tok_s=%.0f mfu=%.4f peak_tflops=%.0f "
              "peak_mem_gib=%.2f act_gib=%.2f step_ms=%.1f attention=%s\n",
              a.config.c_str(), spec.kv.name(spec.heads).c_str(), B, T, accum, cfg.train.recompute.c_str(), tok_s,
              mfu, peak / 1e12, mem_gib, act_gib, 1e3 * elapsed / a.steps,
              attention.substr(0, attention.find(' ')).c_str());
  return kExitOk;
}

// ---- ops: each backend op at the model's shapes, timed alone (median of 10 after 3 warm-ups).
class OpBench {
 public:
  explicit OpBench(Backend& be) : be_(be) {}
  ~OpBench() {
    for (void* p : bufs_) be_.release(p);
  }
  // An activation buffer of n random values (never zeros: they time faster than data).
  void* act(int64_t n, float scale = 1.0f) {
    const int64_t block = std::min<int64_t>(n, int64_t{1} << 22);
    float* tmp = f32(block, scale);
    char* p = static_cast<char*>(be_.alloc(n * be_.act_bytes()));
    bufs_.push_back(p);
    for (int64_t o = 0; o < n; o += block) be_.cast_f32_to_act(p + o * be_.act_bytes(), tmp, std::min(block, n - o));
    return p;
  }
  // Large buffers repeat one random block of 2^22 values: drawing billions on the host is slow.
  float* f32(int64_t n, float scale = 1.0f) {
    const int64_t block = std::min<int64_t>(n, int64_t{1} << 22);
    std::vector<float> h(block);
    std::normal_distribution<float> d(0.0f, scale);
    for (auto& x : h) x = d(rng_);
    auto* p = static_cast<float*>(be_.alloc(n * sizeof(float)));
    bufs_.push_back(p);
    for (int64_t o = 0; o < n; o += block) be_.upload(p + o, h.data(), std::min(block, n - o) * sizeof(float));
    return p;
  }
  int32_t* ids(int64_t n, int64_t vocab) {
    std::vector<int32_t> h(n);
    ZipfTokens z(vocab, 7);
    z.fill(h);
    auto* p = static_cast<int32_t*>(be_.alloc(n * sizeof(int32_t)));
    bufs_.push_back(p);
    be_.upload(p, h.data(), n * sizeof(int32_t));
    return p;
  }
  template <typename F>
  void time(const std::string& name, double flops, double bytes, F&& f) {
    for (int i = 0; i < 3; ++i) f();
    be_.synchronize();
    std::vector<double> us;
    for (int i = 0; i < 10; ++i) {
      const double t0 = now_s();
      f();
      be_.synchronize();
      us.push_back(1e6 * (now_s() - t0));
    }
    std::sort(us.begin(), us.end());
    const double med = us[us.size() / 2];
    std::printf("  %-44s %10.1f us", name.c_str(), med);
    if (flops > 0) std::printf("  %7.1f TFLOP/s", flops / med / 1e6);
    if (bytes > 0) std::printf("  %7.0f GB/s", bytes / med / 1e3);
    std::printf("\n");
    std::fflush(stdout);
  }

 private:
  Backend& be_;
  std::vector<void*> bufs_;
  std::mt19937 rng_{1234};
};

int bench_ops(const Args& a) {
  const Config cfg = load_config(a.config, a.sets);
  const ModelSpec s = cfg.spec();
  auto be = make_backend(cfg.train);
  const int B = cfg.train.micro_batch, T = cfg.train.seq_len;
  const int64_t N = int64_t{B} * T, V = s.vocab;
  const int d = s.d_model, H = s.heads, KVH = s.kv.kv_heads, hd = s.head_dim(), F = s.ffn, R = (H + 2 * KVH) * hd;
  const double ab = be->act_bytes();
  std::printf("mlkv-bench ops %s: N = %d x %d tokens, d %d, heads %d, kv_heads %d, hd %d, ffn %d, vocab %lld\n  %s\n",
              a.config.c_str(), B, T, d, H, KVH, hd, F, static_cast<long long>(V), be->name().c_str());
  OpBench ob(*be);
  auto mm = [&](const char* what, int IC, int OC, bool bias, bool accumulate) {
    void* in = ob.act(N * IC);
    void* w = ob.act(int64_t{OC} * IC, 0.02f);
    void* b = bias ? ob.act(OC) : nullptr;
    void* out = ob.act(N * OC);
    void* dout = ob.act(N * OC);
    void* din = ob.act(N * IC);
    float* dw = ob.f32(int64_t{OC} * IC);
    float* db = ob.f32(OC);
    const double fl = 2.0 * N * IC * OC;
    const std::string shape = " " + std::to_string(N) + "x" + std::to_string(IC) + "->" + std::to_string(OC);
    ob.time(std::string("matmul_forward ") + what + shape, fl, 0,
            [&] { be->matmul_forward(out, in, w, b, N, IC, OC, accumulate); });
    ob.time(std::string("matmul_backward ") + what + shape, 2 * fl, 0,
            [&] { be->matmul_backward(din, dw, bias ? db : nullptr, dout, in, w, N, IC, OC, false); });
  };
  mm("qkv (owner)", d, R, true, false);
  mm("q (non-owner)", d, H * hd, true, false);
  mm("dense", H * hd, d, true, false);
  mm("mlp up", d, F, true, false);
  mm("mlp down (+=)", F, d, true, true);
  mm("lm head", d, static_cast<int>(V), false, false);
  {
    void* x = ob.act(N * d);
    void* w = ob.act(d);
    void* b = ob.act(d);
    void* out = ob.act(N * d);
    float* mean = ob.f32(N);
    float* rstd = ob.f32(N);
    float* dw = ob.f32(d);
    float* db = ob.f32(d);
    be->layernorm_forward(out, mean, rstd, x, w, b, N, d, 1e-5f);
    ob.time("layernorm_forward", 0, 2 * N * d * ab, [&] { be->layernorm_forward(out, mean, rstd, x, w, b, N, d, 1e-5f); });
    ob.time("layernorm_backward", 0, 4 * N * d * ab,
            [&] { be->layernorm_backward(out, dw, db, x, x, w, mean, rstd, N, d); });
    ob.time("add_inplace", 0, 3 * N * d * ab, [&] { be->add_inplace(out, x, N * d); });
  }
  {
    void* h = ob.act(N * F);
    void* g = ob.act(N * F);
    ob.time("gelu_forward", 0, 2 * N * F * ab, [&] { be->gelu_forward(g, h, N * F); });
    ob.time("gelu_backward", 0, 3 * N * F * ab, [&] { be->gelu_backward(g, h, g, N * F); });
  }
  {
    void* qkv = ob.act(N * R);
    void* q = ob.act(N * H * hd);
    void* k = ob.act(N * KVH * hd);
    void* v = ob.act(N * KVH * hd);
    float* dk = ob.f32(N * KVH * hd);
    float* dv = ob.f32(N * KVH * hd);
    const float base = static_cast<float>(s.rotary_base);
    ob.time("qkv_split_rope_forward", 0, 2 * N * R * ab,
            [&] { be->qkv_split_rope_forward(q, k, v, qkv, B, T, H, KVH, hd, s.rot_dims(), base, true); });
    ob.time("qkv_split_rope_backward", 0, N * (H * hd * ab + 2 * KVH * hd * 4 + R * ab),
            [&] { be->qkv_split_rope_backward(qkv, q, dk, dv, B, T, H, KVH, hd, s.rot_dims(), base, true); });
    void* out = ob.act(N * H * hd);
    float* lse = ob.f32(int64_t{B} * H * T);
    const double att = 4.0 * B * H * double(T) * T * hd / 2;  // causal, FlashAttention convention
    ob.time("attention_forward", att, 0, [&] { be->attention_forward(out, lse, q, k, v, B, T, H, KVH, hd); });
    ob.time("attention_backward", 2.5 * att, 0,
            [&] { be->attention_backward(q, dk, dv, out, q, k, v, out, lse, B, T, H, KVH, hd, false); });
  }
  {
    void* logits = ob.act(N * V, 2.0f);
    int32_t* targets = ob.ids(N, V);
    float* losses = ob.f32(N);
    void* fresh = ob.act(N * V, 2.0f);
    // compute_grad overwrites the logits: restore them each time, and time the copy alone too.
    ob.time("copy logits (for reference)", 0, 2 * N * V * ab, [&] { be->copy(logits, fresh, N * V * ab); });
    ob.time("cross_entropy (with grad) + copy", 0, 4 * N * V * ab, [&] {
      be->copy(logits, fresh, N * V * ab);
      be->cross_entropy(losses, logits, targets, N, V, 1.0f / N, true);
    });
  }
  {
    int32_t* tok = ob.ids(N, V);
    void* wte = ob.act(V * d);
    void* out = ob.act(N * d);
    float* dwte = ob.f32(V * d);
    ob.time("embedding_forward", 0, 2 * N * d * ab, [&] { be->embedding_forward(out, tok, wte, N, d); });
    ob.time("embedding_backward (Zipf tokens)", 0, N * d * (ab + 8),
            [&] { be->embedding_backward(dwte, out, tok, N, d, V); });
  }
  {
    const int64_t n = ParamLayout(s).total();
    float* master = ob.f32(n);
    float* grad = ob.f32(n, 1e-3f);
    float* m = ob.f32(n, 1e-3f);
    float* v = ob.f32(n, 1e-3f);
    void* act = ob.act(n);
    be->zero(v, n * sizeof(float));
    AdamwStep st;
    st.lr = 1e-4f;
    ob.time("adamw_update (all params)", 0, n * (4.0 * 4 + 3 * 4 + ab), [&] { be->adamw_update(master, act, grad, m, v, n, st); });
    ob.time("sum_squares (all params)", 0, n * 4.0, [&] { be->sum_squares(grad, n); });
  }
  return kExitOk;
}

// ---- decode (issue 13): for batches 1, 2, 4, … and the largest that fits, sequences of
// --context tokens whose last steps+warmup+1 are decoded (the cache is taken as prefilled with
// the rest: step time depends on the lengths, not on the cached values). The largest batch is the
// one whose weights + KV cache + workspace (decoder_memory, what the Decoder allocates, plus the
// backend's scratch allowance) fit in --memory-budget-gib. Per batch: ms per decode step (every
// layer, final LayerNorm, LM head and device argmax), tokens/s = batch / step time, and the decode
// attention of one layer timed alone with the HBM bytes it must read (K and V of every cached
// position of every KV head, q and out), as GB/s. Random weights: speed does not depend on them.
// --export-hf DIR writes those weights (bf16, no tokenizer) as the HF directory that
// scripts/bench_decode_hf.py times transformers on, with mlkv_bench.json naming the config, plan and
// context of the CSV rows, so the peer's rows carry the same labels as ours.
constexpr size_t kBackendAllowance = size_t{96} << 20;  // cuBLAS workspace, scratch, attention partials

void export_for_peer(const Args& a, const ModelSpec& spec, const std::vector<float>& master) {
  convert::ExportOptions opt;
  opt.dtype = safetensors::DType::BF16;
  opt.tokenizer_from = "";  // the peer feeds token ids
  std::printf("%s", convert::export_hf(convert::BufferSource(spec, master.data()), a.export_hf, opt).c_str());
  const nlohmann::json labels{{"config", a.config},
                              {"plan", spec.kv.name(spec.heads)},
                              {"context", a.context}};
  const std::string path = a.export_hf + "/mlkv_bench.json";
  std::ofstream f(path);
  if (!(f << labels.dump(2) << "\n")) throw IoError(path + ": cannot write");
}

int bench_decode(const Args& a) {
  Config cfg;
  std::vector<float> master;
  const bool from_ckpt = std::filesystem::is_directory(a.config);
  if (from_ckpt) {
    CheckpointData ck = load_checkpoint_weights(a.config);
    cfg = ck.config;
    master = std::move(ck.master);
  } else {
    cfg = load_config(a.config, a.sets);
  }
  ModelSpec spec = cfg.spec();
  spec.max_seq_len = std::max(spec.max_seq_len, a.context);
  auto be = make_backend(cfg.train);
  const int ab = be->act_bytes();
  if (!from_ckpt) {  // small uniform weights, drawn fast (1B parameters)
    master.resize(ParamLayout(spec).total());
    Rng rng(cfg.train.seed);
    for (auto& x : master) x = static_cast<float>((rng.next_u64() >> 40) * (1.0 / (1 << 24)) - 0.5) * 0.04f;
  }
  const size_t budget = static_cast<size_t>(a.budget_gib * double(1 << 30));
  DecoderSize size;
  size.max_ctx = a.context;
  const auto fits = [&](int B) {
    DecoderSize z = size;
    z.max_batch = B;
    return decoder_memory(spec, ab, z).total() + kBackendAllowance <= budget;
  };
  if (!fits(1)) throw ConfigError("decode bench: batch 1 does not fit in " + std::to_string(a.budget_gib) + " GiB");
  int lo = 1, hi = 2;
  while (hi <= a.max_batch && fits(hi)) lo = hi, hi *= 2;
  hi = std::min(hi, a.max_batch + 1);
  while (hi - lo > 1) {
    const int mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  size.max_batch = lo;
  std::vector<int> batches;
  for (int b = 1; b < lo; b *= 2) batches.push_back(b);
  batches.push_back(lo);

  if (!a.export_hf.empty()) export_for_peer(a, spec, master);
  Decoder dec(spec, *be, master, size);
  master.clear();
  master.shrink_to_fit();
  const DecoderMemory& mem = dec.memory();
  const int64_t kv_tok = spec.kv_cache_bytes_per_token(ab);
  const std::string plan = spec.kv.name(spec.heads);
  std::printf("mlkv-bench decode %s\n  model %s, %s, KV cache %lld bytes/token (%s), context %d, budget %.1f GiB\n"
              "  largest batch %d: weights %.2f GiB + cache %.2f GiB + workspace %.2f GiB; backend %s\n",
              a.config.c_str(), cfg.model.name.c_str(), plan.c_str(), static_cast<long long>(kv_tok),
              ab == 2 ? "bf16" : "fp32", a.context, a.budget_gib, lo, mem.weights / double(1 << 30),
              mem.cache / double(1 << 30), mem.workspace / double(1 << 30), be->name().c_str());
  std::printf("  %8s %10s %12s %12s %12s\n", "batch", "ms/step", "tokens/s", "attn us", "attn GB/s");
  std::fflush(stdout);

  std::ofstream csv;
  if (!a.csv.empty()) {
    const bool fresh = !std::filesystem::exists(a.csv) || std::filesystem::file_size(a.csv) == 0;
    csv.open(a.csv, std::ios::app);
    if (!csv) throw IoError(a.csv + ": cannot open for writing");
    if (fresh)
      csv << "impl,config,plan,kv_bytes_per_token,budget_gib,context,batch,largest_batch,weights_gib,cache_gib,"
             "workspace_gib,peak_gib,ms_per_step,tokens_per_s,attn_us,attn_gb_s,device\n";
  }
  const int prompt = a.context - a.steps - a.warmup - 1;
  const int H = spec.heads, KVH = spec.kv.kv_heads, hd = spec.head_dim();
  const int owner = spec.kv.owners()[0];
  void* q = be->alloc(size_t(lo) * H * hd * ab);
  void* out = be->alloc(size_t(lo) * H * hd * ab);
  auto* pos = static_cast<int32_t*>(be->alloc(size_t(lo) * 4));
  const std::vector<int32_t> pos_host(lo, a.context - 1);
  be->upload(pos, pos_host.data(), pos_host.size() * 4);
  for (int B : batches) {
    dec.assume_prefilled(B, prompt);
    std::vector<int32_t> next(B, 1);
    for (int i = 0; i < a.warmup; ++i) {
      dec.step(next);
      next = dec.argmax();
    }
    be->synchronize();
    const double t0 = now_s();
    for (int i = 0; i < a.steps; ++i) {
      dec.step(next);
      next = dec.argmax();  // the device argmax, and its [B] ids back to the host: a real step
    }
    const double step_s = (now_s() - t0) / a.steps;
    // decode attention of one layer at the full context, timed alone (median of 5)
    std::vector<double> us;
    for (int i = 0; i < 6; ++i) {
      be->synchronize();
      const double s0 = now_s();
      be->decode_attention(out, q, dec.k_cache(owner), dec.v_cache(owner), pos, B, H, KVH, hd, a.context, 0,
                           static_cast<float>(spec.rotary_base));
      be->synchronize();
      if (i > 0) us.push_back(1e6 * (now_s() - s0));
    }
    std::sort(us.begin(), us.end());
    const double attn_us = us[us.size() / 2];
    const double bytes = double(B) * (2.0 * KVH * a.context * hd * ab + 2.0 * H * hd * ab);
    const double tok_s = B / step_s, gbs = bytes / attn_us / 1e3;
    // the device's high-water mark (the Decoder is sized for the largest batch); empty where untracked
    const size_t peak = be->peak_memory_bytes();
    const std::string peak_gib = peak ? std::to_string(peak / double(1 << 30)) : "";
    std::printf("  %8d %10.3f %12.0f %12.1f %12.0f\n", B, 1e3 * step_s, tok_s, attn_us, gbs);
    std::fflush(stdout);
    if (csv)
      csv << "mlkv," << a.config << "," << plan << "," << kv_tok << "," << a.budget_gib << "," << a.context << ","
          << B << "," << lo << "," << mem.weights / double(1 << 30) << "," << mem.cache / double(1 << 30) << ","
          << mem.workspace / double(1 << 30) << "," << peak_gib << "," << 1e3 * step_s << "," << tok_s << "," << attn_us << "," << gbs
          << ",\"" << be->name() << "\"\n";
  }
  be->release(q);
  be->release(out);
  be->release(pos);
  std::printf("RESULT decode config=%s plan=\"%s\" kv_bytes_per_token=%lld budget_gib=%.1f largest_batch=%d "
              "peak_mem_gib=%.2f\n",
              a.config.c_str(), plan.c_str(), static_cast<long long>(kv_tok), a.budget_gib, lo,
              be->peak_memory_bytes() / double(1 << 30));
  return kExitOk;
}

}  // namespace
}  // namespace mlkv

int main(int argc, char** argv) {
  try {
    const mlkv::Args a = mlkv::parse_args(argc, argv);
    if (a.command == "decode") return mlkv::bench_decode(a);
    return a.command == "ops" ? mlkv::bench_ops(a) : mlkv::bench_train(a);
  } catch (const mlkv::Error& e) {
    std::fprintf(stderr, "mlkv-bench: %s\n", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mlkv-bench: %s\n", e.what());
    return mlkv::kExitFailure;
  }
}
