// Decoder: prefill, decode steps and sampling over the shared MLKV cache (see decode.h).
#include "core/decode.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "core/errors.h"

namespace mlkv {

void SamplingOptions::validate() const {
  if (!(temperature >= 0) || !std::isfinite(temperature))
    throw ConfigError("sampling: temperature must be >= 0, got " + std::to_string(temperature));
  if (top_k < 0) throw ConfigError("sampling: top_k must be >= 0, got " + std::to_string(top_k));
  if (!(top_p > 0 && top_p <= 1)) throw ConfigError("sampling: top_p must be in (0, 1], got " + std::to_string(top_p));
  if (max_new_tokens < 1) throw ConfigError("sampling: max_new_tokens must be >= 1");
}

int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& o, Rng& rng) {
  if (o.temperature == 0 || o.top_k == 1) return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  // Candidates by decreasing logit, the lower index first among ties (a fixed order: the draw
  // depends only on the logits and the generator).
  std::vector<int32_t> idx(static_cast<size_t>(V));
  std::iota(idx.begin(), idx.end(), 0);
  const auto before = [&](int32_t a, int32_t b) { return logits[a] != logits[b] ? logits[a] > logits[b] : a < b; };
  const int64_t k = o.top_k > 0 ? std::min<int64_t>(o.top_k, V) : V;
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), before);
  idx.resize(static_cast<size_t>(k));
  std::vector<double> prob(idx.size());
  const double mx = logits[idx[0]];
  double total = 0;
  for (size_t i = 0; i < idx.size(); ++i) total += prob[i] = std::exp((logits[idx[i]] - mx) / o.temperature);
  size_t keep = idx.size();
  if (o.top_p < 1) {  // the smallest prefix whose probability reaches top_p
    double cum = 0;
    for (size_t i = 0; i < idx.size(); ++i)
      if ((cum += prob[i]) >= o.top_p * total) {
        keep = i + 1;
        break;
      }
    total = cum;
  }
  double u = rng.uniform() * total;
  for (size_t i = 0; i < keep; ++i)
    if ((u -= prob[i]) <= 0) return idx[i];
  return idx[keep - 1];
}

namespace {

// Every buffer a Decoder allocates, in one place: decoder_memory() adds them up and the
// constructor allocates them, so the memory budget of mlkv-bench decode is the real one.
// f(slot, bytes) is called once per buffer; the slots are the decoder's pointers (or dummies).
struct Buffers {
  const ModelSpec& s;
  int ab;  // compute-dtype bytes
  const DecoderSize& z;
  int64_t prefill_rows() const {
    return std::min<int64_t>(std::max(z.prefill_tokens, z.max_ctx), int64_t{z.max_batch} * z.max_ctx);
  }
  template <typename F>
  void work(F&& f, void** x, void** y, void** ln1, void** ln2, void** qkv, void** q, void** attn, void** h,
            void** gelu, float** mean, float** rstd, int64_t rows) const {
    const int64_t d = s.d_model, hd = s.head_dim(), H = s.heads, KVH = s.kv.kv_heads;
    for (void** slot : {x, y, ln1, ln2}) f(slot, rows * d * ab);
    f(qkv, rows * (H + 2 * KVH) * hd * ab);
    f(q, rows * H * hd * ab);
    f(attn, rows * H * hd * ab);
    f(h, rows * s.ffn * ab);
    f(gelu, rows * s.ffn * ab);
    f(reinterpret_cast<void**>(mean), rows * 4);
    f(reinterpret_cast<void**>(rstd), rows * 4);
  }
};

}  // namespace

DecoderMemory decoder_memory(const ModelSpec& spec, int act_bytes, const DecoderSize& size) {
  DecoderMemory m;
  m.weights = static_cast<size_t>(ParamLayout(spec).total()) * act_bytes;
  m.cache = static_cast<size_t>(spec.kv_cache_bytes_per_token(act_bytes)) * size.max_batch * size.max_ctx;
  size_t ws = 0;
  void* dummy = nullptr;
  float* fdummy = nullptr;
  const Buffers bufs{spec, act_bytes, size};
  const auto count = [&](void**, int64_t bytes) { ws += static_cast<size_t>(bytes); };
  const int64_t B = size.max_batch, P = bufs.prefill_rows(), hd = spec.head_dim(), KVH = spec.kv.kv_heads;
  bufs.work(count, &dummy, &dummy, &dummy, &dummy, &dummy, &dummy, &dummy, &dummy, &dummy, &fdummy, &fdummy, B);
  bufs.work(count, &dummy, &dummy, &dummy, &dummy, &dummy, &dummy, &dummy, &dummy, &dummy, &fdummy, &fdummy, P);
  ws += static_cast<size_t>(P * KVH * hd * act_bytes) * (spec.kv.rope_shared_keys ? 2 : 3);  // k, v (k_rot)
  ws += static_cast<size_t>(P * spec.heads * 4 + P * 4);                                     // lse, tokens
  ws += static_cast<size_t>(B * spec.d_model * act_bytes + B * 8);                           // lnf, pos, ids
  ws += static_cast<size_t>(std::min<int64_t>(size.head_rows, B) * spec.vocab * act_bytes);  // logits
  m.workspace = ws;
  return m;
}

Decoder::Decoder(const ModelSpec& spec, Backend& backend, const std::vector<float>& master, const DecoderSize& size)
    : spec_(spec), layout_(spec_), be_(backend), size_(size) {
  spec_.validate("decoder");
  if (size_.max_batch < 1) throw ConfigError("decoder: max_batch must be >= 1");
  if (size_.max_ctx < 1 || size_.max_ctx > spec_.max_seq_len)
    throw ConfigError("decoder: context " + std::to_string(size_.max_ctx) + " must be in [1, model.max_seq_len = " +
                      std::to_string(spec_.max_seq_len) + "]");
  if (size_.head_rows < 1 || size_.prefill_tokens < 1)
    throw ConfigError("decoder: head_rows and prefill_tokens must be >= 1");
  if (static_cast<int64_t>(master.size()) != layout_.total())
    throw CheckpointError("decoder: parameter vector has " + std::to_string(master.size()) +
                          " elements, the model needs " + std::to_string(layout_.total()));
  mem_ = decoder_memory(spec_, be_.act_bytes(), size_);
  const int ab = be_.act_bytes();
  const auto alloc = [&](void** slot, int64_t bytes) {
    allocations_.push_back(be_.alloc(static_cast<size_t>(bytes)));
    *slot = allocations_.back();
  };
  alloc(&params_, layout_.total() * ab);
  {  // fp32 master → compute dtype, through a bounded temporary (1B: 4 GB otherwise)
    const int64_t n = layout_.total(), piece = std::min<int64_t>(n, int64_t{1} << 26);
    float* tmp = static_cast<float*>(be_.alloc(static_cast<size_t>(piece) * sizeof(float)));
    for (int64_t o = 0; o < n; o += piece) {
      const int64_t m = std::min(piece, n - o);
      be_.upload(tmp, master.data() + o, static_cast<size_t>(m) * sizeof(float));
      be_.cast_f32_to_act(static_cast<char*>(params_) + o * ab, tmp, m);
      be_.synchronize();  // tmp is reused by the next piece's upload
    }
    be_.release(tmp);
  }
  const int64_t B = size_.max_batch, C = size_.max_ctx, hd = spec_.head_dim(), KVH = spec_.kv.kv_heads;
  k_cache_.assign(spec_.layers, nullptr);
  v_cache_.assign(spec_.layers, nullptr);
  for (int o : spec_.kv.owners()) {  // reader layers allocate nothing
    alloc(&k_cache_[o], B * KVH * C * hd * ab);
    alloc(&v_cache_[o], B * KVH * C * hd * ab);
  }
  const Buffers bufs{spec_, ab, size_};
  const int64_t P = bufs.prefill_rows();
  bufs.work(alloc, &dec_.x, &dec_.y, &dec_.ln1, &dec_.ln2, &dec_.qkv, &dec_.q, &dec_.attn, &dec_.h, &dec_.gelu,
            &dec_.mean, &dec_.rstd, B);
  bufs.work(alloc, &pre_.x, &pre_.y, &pre_.ln1, &pre_.ln2, &pre_.qkv, &pre_.q, &pre_.attn, &pre_.h, &pre_.gelu,
            &pre_.mean, &pre_.rstd, P);
  alloc(&pre_.k, P * KVH * hd * ab);
  alloc(&pre_.v, P * KVH * hd * ab);
  if (!spec_.kv.rope_shared_keys) alloc(&pre_.k_rot, P * KVH * hd * ab);
  alloc(reinterpret_cast<void**>(&pre_.lse), P * spec_.heads * 4);
  alloc(reinterpret_cast<void**>(&ptokens_), P * 4);
  alloc(&lnf_, B * spec_.d_model * ab);
  alloc(reinterpret_cast<void**>(&pos_dev_), B * 4);
  alloc(reinterpret_cast<void**>(&ids_dev_), B * 4);
  alloc(&logits_, std::min<int64_t>(size_.head_rows, B) * spec_.vocab * ab);
}

Decoder::~Decoder() {
  for (void* a : allocations_) be_.release(a);
}

void* Decoder::p(int view) const {
  return static_cast<char*>(params_) + layout_.views()[view].offset * be_.act_bytes();
}

void Decoder::layer(int l, Work& w, const void* x, void* y, bool decode, int b0, int nb, int T) {
  const ModelSpec& s = spec_;
  const LayerParams& lp = layout_.layer(l);
  const int d = s.d_model, hd = s.head_dim(), H = s.heads, KVH = s.kv.kv_heads, F = s.ffn, rot = s.rot_dims(),
            C = size_.max_ctx, o = s.kv.owner[l];
  const bool owner = o == l, shared_rot = s.kv.rope_shared_keys;
  const float base = static_cast<float>(s.rotary_base), eps = static_cast<float>(s.ln_eps);
  const int64_t N = decode ? nb : int64_t{nb} * T;
  const size_t at = static_cast<size_t>(b0) * KVH * C * hd * be_.act_bytes();  // sequence b0 in the cache
  void* kc = static_cast<char*>(k_cache_[o]) + at;
  void* vc = static_cast<char*>(v_cache_[o]) + at;

  be_.layernorm_pair_forward(w.ln1, w.ln2, w.mean, w.rstd, x, p(lp.ln1_w), p(lp.ln1_b), p(lp.ln2_w), p(lp.ln2_b), N,
                             d, eps);
  be_.matmul_forward(w.qkv, w.ln1, p(lp.qkv_w), p(lp.qkv_b), N, d, layout_.qkv_rows(l), false);
  if (decode) {
    be_.qkv_rope_append(w.q, owner ? kc : nullptr, owner ? vc : nullptr, w.qkv, pos_dev_, nb, H, owner ? KVH : 0,
                        hd, C, rot, base, shared_rot);
    be_.decode_attention(w.attn, w.q, kc, vc, pos_dev_, nb, H, KVH, hd, C, owner && !shared_rot ? rot : 0, base);
  } else {
    // Groups are contiguous runs of layers (KvPlan), so w.k and w.v hold the group's K/V until the
    // next owner overwrites them; readers leave them untouched (KVH = 0).
    be_.qkv_split_rope_forward(w.q, w.k, w.v, w.qkv, nb, T, H, owner ? KVH : 0, hd, rot, base, shared_rot);
    if (owner) be_.kv_cache_store(kc, vc, w.k, w.v, nb, KVH, T, C, hd);
    const void* k_use = w.k;
    if (owner && !shared_rot) {  // seed-paper mode: the owner alone attends to rotated K
      be_.rope_forward(w.k_rot, w.k, int64_t{nb} * KVH, T, hd, rot, base);
      k_use = w.k_rot;
    }
    be_.attention_forward(w.attn, w.lse, w.q, k_use, w.v, nb, T, H, KVH, hd);
  }
  // parallel residual: y = x + dense(attn) + down(gelu(up(ln2(x))))
  be_.matmul_forward(y, w.attn, p(lp.dense_w), p(lp.dense_b), N, H * hd, d, false);
  be_.matmul_forward(w.h, w.ln2, p(lp.up_w), p(lp.up_b), N, d, F, false);
  be_.gelu_forward(w.gelu, w.h, N * F);
  be_.matmul_forward(y, w.gelu, p(lp.down_w), p(lp.down_b), N, F, d, true);
  be_.add_inplace(y, x, N * d);
}

static void check_tokens(const std::vector<int32_t>& ids, int64_t vocab, const std::string& what) {
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= vocab)
      throw DataError(what + ": token id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                      " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
}

void Decoder::prefill(const std::vector<std::vector<int32_t>>& prompts) {
  const int B = static_cast<int>(prompts.size()), d = spec_.d_model;
  if (B < 1 || B > size_.max_batch)
    throw ConfigError("decoder: " + std::to_string(B) + " prompts, the decoder holds 1 to " +
                      std::to_string(size_.max_batch));
  int T = 0;
  for (int b = 0; b < B; ++b) {
    const int n = static_cast<int>(prompts[b].size());
    if (n < 1 || n > size_.max_ctx)
      throw DataError("prompt " + std::to_string(b) + " has " + std::to_string(n) + " tokens; it needs 1 to " +
                      std::to_string(size_.max_ctx));
    check_tokens(prompts[b], spec_.vocab, "prompt " + std::to_string(b));
    T = std::max(T, n);
  }
  const int chunk = static_cast<int>(std::max<int64_t>(1, Buffers{spec_, be_.act_bytes(), size_}.prefill_rows() / T));
  std::vector<int32_t> tokens, last;
  for (int b0 = 0; b0 < B; b0 += chunk) {
    const int nb = std::min(chunk, B - b0);
    tokens.assign(static_cast<size_t>(nb) * T, 0);  // right padding: never attended by a real position
    last.resize(nb);
    for (int i = 0; i < nb; ++i) {
      std::copy(prompts[b0 + i].begin(), prompts[b0 + i].end(), tokens.begin() + int64_t{i} * T);
      last[i] = i * T + static_cast<int>(prompts[b0 + i].size()) - 1;
    }
    be_.upload(ptokens_, tokens.data(), tokens.size() * sizeof(int32_t));
    be_.embedding_forward(pre_.x, ptokens_, p(layout_.embed_in()), int64_t{nb} * T, d);
    void *x = pre_.x, *y = pre_.y;
    for (int l = 0; l < spec_.layers; ++l) {
      layer(l, pre_, x, y, false, b0, nb, T);
      std::swap(x, y);
    }
    // Each prompt's last row into the decode residual (a row gather is an embedding look-up).
    be_.upload(ids_dev_, last.data(), last.size() * sizeof(int32_t));
    be_.embedding_forward(static_cast<char*>(dec_.x) + int64_t{b0} * d * be_.act_bytes(), ids_dev_, x, nb, d);
  }
  be_.layernorm_forward(lnf_, dec_.mean, dec_.rstd, dec_.x, p(layout_.final_ln_w()), p(layout_.final_ln_b()), B, d,
                        static_cast<float>(spec_.ln_eps));
  len_.resize(B);
  for (int b = 0; b < B; ++b) len_[b] = static_cast<int>(prompts[b].size());
}

void Decoder::assume_prefilled(int batch, int length) {
  if (batch < 1 || batch > size_.max_batch || length < 1 || length >= size_.max_ctx)
    throw ConfigError("decoder: assume_prefilled(" + std::to_string(batch) + ", " + std::to_string(length) +
                      ") does not fit max_batch " + std::to_string(size_.max_batch) + ", context " +
                      std::to_string(size_.max_ctx));
  len_.assign(batch, length);
}

void Decoder::step(const std::vector<int32_t>& tokens) {
  const int B = batch(), d = spec_.d_model;
  if (B == 0) throw Error("decoder: step before prefill");
  if (static_cast<int>(tokens.size()) != B)
    throw ConfigError("decoder: step got " + std::to_string(tokens.size()) + " tokens for " + std::to_string(B) +
                      " sequences");
  check_tokens(tokens, spec_.vocab, "decode step");
  for (int b = 0; b < B; ++b)
    if (len_[b] >= size_.max_ctx)
      throw ConfigError("decoder: sequence " + std::to_string(b) + " is full (" + std::to_string(size_.max_ctx) +
                        " tokens)");
  be_.upload(ids_dev_, tokens.data(), B * sizeof(int32_t));
  be_.upload(pos_dev_, len_.data(), B * sizeof(int32_t));  // the new token's position = current length
  be_.embedding_forward(dec_.x, ids_dev_, p(layout_.embed_in()), B, d);
  void *x = dec_.x, *y = dec_.y;
  for (int l = 0; l < spec_.layers; ++l) {
    layer(l, dec_, x, y, true, 0, B, 1);
    std::swap(x, y);
  }
  be_.layernorm_forward(lnf_, dec_.mean, dec_.rstd, x, p(layout_.final_ln_w()), p(layout_.final_ln_b()), B, d,
                        static_cast<float>(spec_.ln_eps));
  for (int& n : len_) ++n;
}

void Decoder::head_chunk(int64_t row0, int64_t rows) {
  be_.matmul_forward(logits_, static_cast<char*>(lnf_) + row0 * spec_.d_model * be_.act_bytes(),
                     p(layout_.embed_out()), nullptr, rows, spec_.d_model, static_cast<int>(spec_.vocab), false);
}

std::vector<float> Decoder::logits() {
  const int64_t B = batch(), V = spec_.vocab, R = std::min<int64_t>(size_.head_rows, size_.max_batch);
  std::vector<float> host(static_cast<size_t>(B * V));
  float* tmp = static_cast<float*>(be_.alloc(static_cast<size_t>(R * V) * sizeof(float)));
  for (int64_t r0 = 0; r0 < B; r0 += R) {
    const int64_t n = std::min(R, B - r0);
    head_chunk(r0, n);
    be_.cast_act_to_f32(tmp, logits_, n * V);
    be_.download(host.data() + r0 * V, tmp, static_cast<size_t>(n * V) * sizeof(float));
  }
  be_.release(tmp);
  return host;
}

std::vector<int32_t> Decoder::argmax() {
  const int64_t B = batch(), V = spec_.vocab, R = std::min<int64_t>(size_.head_rows, size_.max_batch);
  for (int64_t r0 = 0; r0 < B; r0 += R) {
    const int64_t n = std::min(R, B - r0);
    head_chunk(r0, n);
    be_.argmax_rows(ids_dev_ + r0, logits_, n, V);
  }
  std::vector<int32_t> ids(static_cast<size_t>(B));
  be_.download(ids.data(), ids_dev_, ids.size() * sizeof(int32_t));
  return ids;
}

std::vector<std::vector<int32_t>> Decoder::generate(const std::vector<std::vector<int32_t>>& prompts,
                                                    const SamplingOptions& o,
                                                    const std::function<void(const std::vector<float>&)>& on_logits) {
  o.validate();
  for (size_t b = 0; b < prompts.size(); ++b)
    if (prompts[b].size() + o.max_new_tokens - 1 > static_cast<size_t>(size_.max_ctx))
      throw ConfigError("prompt " + std::to_string(b) + " (" + std::to_string(prompts[b].size()) + " tokens) + " +
                        std::to_string(o.max_new_tokens) + " new tokens exceed the context of " +
                        std::to_string(size_.max_ctx));
  prefill(prompts);
  const int B = batch();
  const int64_t V = spec_.vocab;
  const bool greedy = o.temperature == 0 || o.top_k == 1;
  std::vector<Rng> rngs;
  for (int b = 0; b < B; ++b) rngs.emplace_back(Rng(o.seed + static_cast<uint64_t>(b)).next_u64());
  std::vector<std::vector<int32_t>> out(B);
  std::vector<bool> done(B, false);
  for (int i = 0; i < o.max_new_tokens; ++i) {
    std::vector<int32_t> next;
    std::vector<float> host;
    if (on_logits || !greedy) host = logits();
    if (on_logits) on_logits(host);
    if (greedy) {
      next = argmax();
    } else {
      next.resize(B);
      for (int b = 0; b < B; ++b) next[b] = sample_token(host.data() + int64_t{b} * V, V, o, rngs[b]);
    }
    int live = 0;
    for (int b = 0; b < B; ++b) {
      if (done[b]) continue;
      out[b].push_back(next[b]);
      done[b] = next[b] == o.eos_id || static_cast<int>(out[b].size()) == o.max_new_tokens;
      live += !done[b];
    }
    if (live == 0) break;
    step(next);  // finished sequences step along (their tokens are ignored): one batch, one shape
  }
  return out;
}

}  // namespace mlkv
