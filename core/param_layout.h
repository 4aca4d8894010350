// ParamLayout: every parameter of the model as a named view into one contiguous fp32 buffer.
// It is the single source of truth for names, shapes, order and weight-decay membership; the
// optimizer, checkpoints, the converter and tensor parallelism all read it.
//
// Names (ours; core/hf_names maps HF GPT-NeoX names onto them):
//   embed_in.weight [V, d]
//   layers.N.ln1.{weight,bias} [d]      layers.N.ln2.{weight,bias} [d]
//   layers.N.attn.qkv.{weight [R, d], bias [R]}   R = (H + 2·KVH)·hd in KV layers, H·hd otherwise;
//                                                 rows: all q heads, then all k heads, then all v heads
//   layers.N.attn.dense.{weight [d, H·hd], bias [d]}
//   layers.N.mlp.up.{weight [ffn, d], bias [ffn]}  layers.N.mlp.down.{weight [d, ffn], bias [d]}
//   final_ln.{weight,bias} [d]          embed_out.weight [V, d]
//
// Tensor parallelism (Megatron style, DESIGN §3b): with tp > 1 the layout is rank tp_rank's local
// one. Names stay the same; shapes shrink:
//   ColumnParallelLinear (output rows split): attn.qkv (this rank's H/tp query heads and their KV
//     heads), mlp.up;  RowParallelLinear (input columns split): attn.dense, mlp.down (biases
//     replicated, added once after the all-reduce);  vocab-parallel: embed_in, embed_out (V/tp
//     rows each);  replicated: LayerNorms.
//   KV heads are split when kv_heads % tp == 0; otherwise (tp % kv_heads == 0) every rank holds the
//   one KV head its query heads read, a copy shared with tp/kv_heads ranks.
// Each view records how it maps onto the full (tp = 1) tensor, so checkpoints gather and slice
// tensors by name for any layout.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/model_spec.h"

namespace mlkv {

// Where a local view sits in the full tensor: local row i is full row rows-segment-mapped(i),
// local column j is full column col0 + j (1-D tensors: elements are rows of one column).
struct TpSlice {
  std::vector<int64_t> full_shape;                // the shape at tp = 1
  std::vector<std::pair<int64_t, int64_t>> rows;  // (first full row, count), concatenated in order
  int64_t col0 = 0;
  // Local elements [rep_begin, rep_begin + rep_count) are held, identically, by `copies` tp ranks
  // (LayerNorms, row-parallel biases: all tp ranks; a replicated K/V projection: tp/kv_heads).
  int64_t rep_begin = 0, rep_count = 0;
  int copies = 1;
  // The copies' gradients are partial sums to be all-reduced over the ranks sharing them (a
  // replicated K/V projection: each rank back-propagates only its own query heads).
  bool partial_grads = false;
};

struct ParamView {
  std::string name;
  std::vector<int64_t> shape;  // local shape (the full one when tp = 1)
  int64_t offset = 0;          // in elements, from the start of the flat buffer
  int64_t numel = 0;
  bool decay = false;  // weight decay applies (matrices and embeddings, not biases or LayerNorm)
  TpSlice tp;
};

// Indices into ParamLayout::views() for one layer, so the model needs no string look-ups.
struct LayerParams {
  int ln1_w, ln1_b, ln2_w, ln2_b, qkv_w, qkv_b, dense_w, dense_b, up_w, up_b, down_w, down_b;
};

class ParamLayout {
 public:
  // The layout of tensor-parallel rank tp_rank of tp (tp = 1: the full model). Throws ConfigError
  // when tp does not divide heads, ffn and vocab, or neither divides nor is a multiple of kv_heads.
  explicit ParamLayout(const ModelSpec& spec, int tp = 1, int tp_rank = 0);
  // The views of `full` that intersect the given [begin, end) ranges of its flat buffer, packed
  // one range after another (a ZeRO-1 shard: AdamW then allocates and updates just that much).
  // Names and decay are kept; offsets are into the packed buffer; total() is the ranges' sum.
  static ParamLayout restricted(const ParamLayout& full, const std::vector<std::pair<int64_t, int64_t>>& ranges);

  const std::vector<ParamView>& views() const { return views_; }
  const ParamView& at(const std::string& name) const;  // throws CheckpointError if unknown
  const ParamView* find(const std::string& name) const;
  int64_t total() const { return total_; }              // buffer length in elements (with alignment gaps)
  int64_t total_params() const { return params_; }      // real parameters (local ones under tp)
  const LayerParams& layer(int l) const { return layers_[l]; }
  int embed_in() const { return embed_in_; }
  int final_ln_w() const { return final_ln_w_; }
  int final_ln_b() const { return final_ln_b_; }
  int embed_out() const { return embed_out_; }

  // ---- tensor parallelism: local sizes of this rank
  int tp() const { return tp_; }
  int tp_rank() const { return tp_rank_; }
  int local_heads() const { return heads_l_; }
  int local_kv_heads() const { return kv_heads_l_; }  // of KV layers
  int first_kv_head() const { return kv0_; }          // the full model's index of local KV head 0
  int kv_copies() const { return kv_copies_; }        // ranks holding the same KV head (1: split)
  int local_ffn() const { return ffn_l_; }
  int64_t local_vocab() const { return vocab_l_; }
  int64_t vocab_begin() const { return int64_t{tp_rank_} * vocab_l_; }
  int qkv_rows(int l) const;  // local rows of layer l's fused projection
  // tp > 1: a row of d zero elements right after embed_in's view, not part of any view; the
  // vocab-parallel embedding points tokens of other ranks at it (-1 when tp = 1).
  int64_t embed_scratch_offset() const { return embed_scratch_; }

 private:
  ParamLayout() = default;
  int add(const std::string& name, std::vector<int64_t> shape, bool decay, TpSlice slice);
  std::vector<ParamView> views_;
  std::vector<LayerParams> layers_;
  int embed_in_ = 0, final_ln_w_ = 0, final_ln_b_ = 0, embed_out_ = 0;
  int64_t total_ = 0, params_ = 0;
  int tp_ = 1, tp_rank_ = 0, heads_l_ = 0, kv_heads_l_ = 0, kv0_ = 0, kv_copies_ = 1, ffn_l_ = 0, head_dim_ = 0;
  int heads_ = 0;
  std::vector<bool> owner_;
  int64_t vocab_l_ = 0, embed_scratch_ = -1;
};

// Copies between a full (tp = 1) tensor and one rank's local view of it (TpSlice mapping).
void slice_from_full(float* local, const float* full, const ParamView& v);
void place_into_full(float* full, const float* local, const ParamView& v);

// Pythia's initialisation (GPT-NeoX "small_init" for most weights, "wang_init" for the output
// projections of each block; zero biases; LayerNorm weight 1, bias 0), deterministic in `seed`.
// Always drawn for the full model; a tensor-parallel layout takes its slice, so every tp gives
// the same model.
void init_pythia(std::vector<float>& params, const ParamLayout& layout, const ModelSpec& spec, uint64_t seed);

}  // namespace mlkv
