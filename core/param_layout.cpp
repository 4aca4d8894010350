// ParamLayout construction (full and tensor-parallel), ZeRO-1 restriction, and Pythia init.
#include "core/param_layout.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/errors.h"
#include "core/rng.h"

namespace mlkv {

// Views start at multiples of 64 elements so every tensor is 256-byte aligned in fp32 and
// 128-byte aligned in bf16: vector loads and cuBLASLt want aligned operands.
static constexpr int64_t kAlign = 64;
static int64_t round_up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

int ParamLayout::add(const std::string& name, std::vector<int64_t> shape, bool decay, TpSlice slice) {
  ParamView v;
  v.name = name;
  v.numel = 1;
  for (int64_t s : shape) v.numel *= s;
  v.shape = std::move(shape);
  v.offset = total_;
  v.decay = decay;
  v.tp = std::move(slice);
  total_ += round_up(v.numel);
  params_ += v.numel;
  views_.push_back(std::move(v));
  return static_cast<int>(views_.size()) - 1;
}

namespace {

// Slices of the full tensor for the usual cases.
TpSlice replicated(std::vector<int64_t> full, int copies) {
  TpSlice s;
  s.rows = {{0, full[0]}};
  s.rep_count = 1;
  for (int64_t x : full) s.rep_count *= x;
  s.copies = copies;
  s.full_shape = std::move(full);
  return s;
}
TpSlice row_block(std::vector<int64_t> full, int64_t first, int64_t count) {
  TpSlice s;
  s.full_shape = std::move(full);
  s.rows = {{first, count}};
  return s;
}
TpSlice col_block(std::vector<int64_t> full, int64_t col0) {
  TpSlice s;
  s.rows = {{0, full[0]}};
  s.full_shape = std::move(full);
  s.col0 = col0;
  return s;
}

}  // namespace

ParamLayout::ParamLayout(const ModelSpec& s, int tp, int tp_rank) : tp_(tp), tp_rank_(tp_rank) {
  const int64_t d = s.d_model, V = s.vocab, ffn = s.ffn, hd = s.head_dim(), H = s.heads, KVH = s.kv.kv_heads;
  auto fail = [&](const std::string& m) { throw ConfigError("parallel.tp = " + std::to_string(tp) + ": " + m); };
  if (tp < 1 || tp_rank < 0 || tp_rank >= tp) fail("bad tensor-parallel rank " + std::to_string(tp_rank));
  if (H % tp) fail("must divide model.heads = " + std::to_string(H));
  if (ffn % tp) fail("must divide the MLP width " + std::to_string(ffn));
  if (V % tp) fail("must divide the padded vocabulary " + std::to_string(V));
  if (KVH % tp && tp % KVH) fail("must divide or be a multiple of kv.kv_heads = " + std::to_string(KVH));
  heads_ = s.heads;
  head_dim_ = s.head_dim();
  heads_l_ = static_cast<int>(H / tp);
  if (KVH % tp == 0) {  // split KV heads: the ordinary Megatron case
    kv_heads_l_ = static_cast<int>(KVH / tp);
    kv0_ = tp_rank * kv_heads_l_;
    kv_copies_ = 1;
  } else {  // fewer KV heads than ranks: each rank holds the one its query heads read
    kv_heads_l_ = 1;
    kv_copies_ = static_cast<int>(tp / KVH);
    kv0_ = tp_rank / kv_copies_;
  }
  ffn_l_ = static_cast<int>(ffn / tp);
  vocab_l_ = V / tp;
  owner_.resize(s.layers);
  for (int l = 0; l < s.layers; ++l) owner_[l] = s.kv.is_owner(l);

  const int64_t Hl = heads_l_, KVl = kv_heads_l_, Fl = ffn_l_, Vl = vocab_l_;
  const bool split = tp > 1;
  embed_in_ = add("embed_in.weight", {Vl, d}, true, row_block({V, d}, tp_rank * Vl, Vl));
  if (split) {  // zero row for tokens owned by other ranks: row Vl of embed_in's view
    embed_scratch_ = views_[embed_in_].offset + views_[embed_in_].numel;
    total_ = round_up(embed_scratch_ + d);
  }
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    const bool own = owner_[l];
    const int64_t R = s.qkv_rows(l), Rl = qkv_rows(l);
    // Local q|k|v rows: this rank's query heads, then its KV heads' k rows, then their v rows.
    std::vector<std::pair<int64_t, int64_t>> qkv_rows_map = {{tp_rank * Hl * hd, Hl * hd}};
    if (own) {
      qkv_rows_map.push_back({H * hd + kv0_ * hd, KVl * hd});
      qkv_rows_map.push_back({(H + KVH) * hd + kv0_ * hd, KVl * hd});
    }
    TpSlice qkv_w{{R, d}, qkv_rows_map, 0, 0, 0, 1, false}, qkv_b{{R}, qkv_rows_map, 0, 0, 0, 1, false};
    if (own && kv_copies_ > 1) {  // the replicated K/V rows sit after the local q rows
      qkv_w.rep_begin = Hl * hd * d;
      qkv_w.rep_count = 2 * KVl * hd * d;
      qkv_b.rep_begin = Hl * hd;
      qkv_b.rep_count = 2 * KVl * hd;
      qkv_w.copies = qkv_b.copies = kv_copies_;
      qkv_w.partial_grads = qkv_b.partial_grads = true;
    }
    LayerParams lp{};
    lp.ln1_w = add(p + "ln1.weight", {d}, false, replicated({d}, tp));
    lp.ln1_b = add(p + "ln1.bias", {d}, false, replicated({d}, tp));
    lp.ln2_w = add(p + "ln2.weight", {d}, false, replicated({d}, tp));
    lp.ln2_b = add(p + "ln2.bias", {d}, false, replicated({d}, tp));
    lp.qkv_w = add(p + "attn.qkv.weight", {Rl, d}, true, qkv_w);
    lp.qkv_b = add(p + "attn.qkv.bias", {Rl}, false, qkv_b);
    lp.dense_w = add(p + "attn.dense.weight", {d, Hl * hd}, true, col_block({d, H * hd}, tp_rank * Hl * hd));
    lp.dense_b = add(p + "attn.dense.bias", {d}, false, replicated({d}, tp));
    lp.up_w = add(p + "mlp.up.weight", {Fl, d}, true, row_block({ffn, d}, tp_rank * Fl, Fl));
    lp.up_b = add(p + "mlp.up.bias", {Fl}, false, row_block({ffn}, tp_rank * Fl, Fl));
    lp.down_w = add(p + "mlp.down.weight", {d, Fl}, true, col_block({d, ffn}, tp_rank * Fl));
    lp.down_b = add(p + "mlp.down.bias", {d}, false, replicated({d}, tp));
    layers_.push_back(lp);
  }
  final_ln_w_ = add("final_ln.weight", {d}, false, replicated({d}, tp));
  final_ln_b_ = add("final_ln.bias", {d}, false, replicated({d}, tp));
  embed_out_ = add("embed_out.weight", {Vl, d}, true, row_block({V, d}, tp_rank * Vl, Vl));
  // With tp = 1 nothing is shared between ranks: drop the "replicated across 1 rank" marks.
  if (tp == 1)
    for (auto& v : views_) v.tp.rep_count = 0, v.tp.copies = 1;
}

int ParamLayout::qkv_rows(int l) const {
  return (heads_l_ + (owner_[l] ? 2 * kv_heads_l_ : 0)) * head_dim_;
}

ParamLayout ParamLayout::restricted(const ParamLayout& full, const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  ParamLayout r;
  r.tp_ = full.tp_;
  r.tp_rank_ = full.tp_rank_;
  int64_t base = 0;
  for (auto [lo, hi] : ranges) {
    for (const ParamView& v : full.views_) {
      const int64_t a = std::max(lo, v.offset), b = std::min(hi, v.offset + v.numel);
      if (a >= b) continue;
      ParamView piece;
      piece.name = v.name;
      piece.shape = {b - a};
      piece.offset = base + (a - lo);
      piece.numel = b - a;
      piece.decay = v.decay;
      r.params_ += piece.numel;
      r.views_.push_back(std::move(piece));
    }
    base += hi - lo;
  }
  r.total_ = base;
  return r;
}

const ParamView* ParamLayout::find(const std::string& name) const {
  for (const auto& v : views_)
    if (v.name == name) return &v;
  return nullptr;
}

const ParamView& ParamLayout::at(const std::string& name) const {
  if (const ParamView* v = find(name)) return *v;
  throw CheckpointError("no parameter named '" + name + "' in this model");
}

// Walks the local rows in order, handing each (local row, full row) pair to `f`.
template <class F>
static void for_each_row(const ParamView& v, F&& f) {
  int64_t local = 0;
  for (auto [first, count] : v.tp.rows)
    for (int64_t i = 0; i < count; ++i) f(local++, first + i);
}

void slice_from_full(float* local, const float* full, const ParamView& v) {
  const int64_t cols = v.shape.size() > 1 ? v.shape[1] : 1;
  const int64_t full_cols = v.tp.full_shape.size() > 1 ? v.tp.full_shape[1] : 1;
  for_each_row(v, [&](int64_t li, int64_t fi) {
    std::memcpy(local + li * cols, full + fi * full_cols + v.tp.col0, cols * sizeof(float));
  });
}

void place_into_full(float* full, const float* local, const ParamView& v) {
  const int64_t cols = v.shape.size() > 1 ? v.shape[1] : 1;
  const int64_t full_cols = v.tp.full_shape.size() > 1 ? v.tp.full_shape[1] : 1;
  for_each_row(v, [&](int64_t li, int64_t fi) {
    std::memcpy(full + fi * full_cols + v.tp.col0, local + li * cols, cols * sizeof(float));
  });
}

void init_pythia(std::vector<float>& params, const ParamLayout& layout, const ModelSpec& s, uint64_t seed) {
  if (layout.tp() > 1) {  // draw the full model, then keep this rank's slices
    const ParamLayout full_layout(s);
    std::vector<float> full;
    init_pythia(full, full_layout, s, seed);
    params.assign(layout.total(), 0.0f);
    for (const ParamView& v : layout.views())
      slice_from_full(params.data() + v.offset, full.data() + full_layout.at(v.name).offset, v);
    return;
  }
  params.assign(layout.total(), 0.0f);
  // GPT-NeoX: small_init std = sqrt(2 / (5·d)); wang_init std = 2 / (L·sqrt(d)) for the
  // projections that write into the residual stream (attention dense, MLP down).
  const double small = std::sqrt(2.0 / (5.0 * s.d_model));
  const double wang = 2.0 / (s.layers * std::sqrt(static_cast<double>(s.d_model)));
  // One normal takes two draws of the seed's stream, in view order over the decayed tensors: the
  // stream position of every element is known up front, so the fill runs in parallel and is
  // bit-identical to a sequential loop (a 6.9B model is ~7e9 Box-Muller draws: minutes on one core).
  uint64_t normals_before = 0;
  for (const ParamView& v : layout.views()) {
    float* p = params.data() + v.offset;
    const bool is_ln_weight = v.name.find("ln") != std::string::npos && v.name.ends_with(".weight");
    if (is_ln_weight) {
      std::fill(p, p + v.numel, 1.0f);
    } else if (v.decay) {
      const bool out_proj = v.name.ends_with("attn.dense.weight") || v.name.ends_with("mlp.down.weight");
      const double std = out_proj ? wang : small;
      const uint64_t k0 = normals_before;
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < v.numel; ++i) {
        Rng rng = Rng::skipped(seed, 2 * (k0 + static_cast<uint64_t>(i)));
        p[i] = static_cast<float>(std * rng.normal());
      }
      normals_before += static_cast<uint64_t>(v.numel);
    }
  }
}

}  // namespace mlkv
