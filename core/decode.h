// Decoder: autoregressive generation with the shared MLKV KV cache, written once against the
// Backend ops (core/backend.h) for every device, like Model (issue 13).
//
// The cache holds only what the KV plan needs: for each owner layer o, k_o and v_o of shape
// [B, kv_heads, C, hd] in the compute dtype (C = max_ctx). Reader layers allocate nothing and
// attend to their owner's cache. [B, KVH, C, hd] keeps one (sequence, KV head)'s keys contiguous,
// which is what the decode attention streams: one block reads that run once for all the query
// heads of the group, and a split of the context is a sub-range of it.
//
// Rotary and kv.rope_shared_keys = false (the seed paper's mode, where readers attend to the
// owner's UN-rotated K while the owner attends to its rotated K): the cache holds the un-rotated
// K once, and the owner's decode attention rotates each key by its own position while reading it
// (Backend::decode_attention's rot_k). Keeping a second, rotated copy would double the owner's K
// bytes for a cost (rot/2 sines and cosines per key, rot = 16 of 64 dims in Pythia) that is far
// below the cache read. The prefill builds the owner's rotated K in a temporary, as training does.
// With rope_shared_keys = true the cache holds the rotated K that every layer of the group reads.
//
// Prefill: prompts of different lengths are right-padded to the longest; causal attention means
// padding never reaches a real position, so every prompt's positions and logits are exact, and each
// sequence then writes its next token at its own length. The prefill runs the flash-attention
// forward (Backend::attention_forward) on chunks of whole sequences, at most prefill_tokens rows at
// a time, so its workspace does not grow with the batch. Logits are computed for the last token of
// each sequence only, and the LM head runs over head_rows sequences at a time (a [B, V] logits
// buffer would outgrow the cache at large batches); greedy decoding takes the argmax on the device.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "core/backend.h"
#include "core/model_spec.h"
#include "core/param_layout.h"
#include "core/rng.h"

namespace mlkv {

struct SamplingOptions {
  float temperature = 0;    // 0: greedy (argmax on the device)
  int top_k = 0;            // keep the k most likely tokens (0: all)
  float top_p = 1;          // keep the smallest set whose probability reaches top_p (1: all)
  uint64_t seed = 0;        // sequence b draws from Rng(seed, b): independent of the batch it is in
  int max_new_tokens = 32;  // per sequence
  int32_t eos_id = -1;      // a sequence stops after generating it (-1: never)
  void validate() const;    // ConfigError for out-of-range values
};

// Draws one token id from logits[V] (fp32) with temperature, top-k and top-p; greedy (lowest index
// among ties) when temperature is 0 or top_k is 1.
int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& o, Rng& rng);

struct DecoderSize {
  int max_batch = 1;
  int max_ctx = 0;              // longest sequence (prompt + generated); <= spec.max_seq_len
  int prefill_tokens = 8192;    // rows per prefill chunk (at least one whole prompt)
  int head_rows = 1024;         // sequences per LM-head chunk
};

// Device bytes a Decoder of `size` allocates: weights, the KV cache and the workspace.
struct DecoderMemory {
  size_t weights = 0, cache = 0, workspace = 0;
  size_t total() const { return weights + cache + workspace; }
};
DecoderMemory decoder_memory(const ModelSpec& spec, int act_bytes, const DecoderSize& size);

class Decoder {
 public:
  // `master` is the fp32 parameter vector in ParamLayout(spec) order (a checkpoint's weights).
  Decoder(const ModelSpec& spec, Backend& backend, const std::vector<float>& master, const DecoderSize& size);
  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  const ModelSpec& spec() const { return spec_; }
  const DecoderSize& size() const { return size_; }
  int batch() const { return static_cast<int>(len_.size()); }
  const std::vector<int>& lengths() const { return len_; }  // tokens in each sequence's cache
  const DecoderMemory& memory() const { return mem_; }
  // Owner layer o's cache buffers k/v[max_batch, kv_heads, max_ctx, hd] (null for readers), for
  // benchmarks that time the decode attention alone.
  const void* k_cache(int layer) const { return k_cache_[layer]; }
  const void* v_cache(int layer) const { return v_cache_[layer]; }

  // Starts prompts.size() sequences; afterwards logits()/argmax() give each prompt's next token.
  void prefill(const std::vector<std::vector<int32_t>>& prompts);
  // Appends tokens[b] to every sequence and computes the next logits.
  void step(const std::vector<int32_t>& tokens);
  std::vector<float> logits();    // [batch, V] fp32 on the host
  std::vector<int32_t> argmax();  // [batch], computed on the device
  // Benchmarks: `batch` sequences of `length` tokens whose cache holds whatever it holds (the
  // speed of a step does not depend on the values).
  void assume_prefilled(int batch, int length);

  // prefill + sampling loop. on_logits, when set, receives every step's [batch, V] logits before
  // the tokens are chosen (tests compare them with a full forward). Returns the generated ids
  // of each sequence (ending with eos_id when it stopped there).
  std::vector<std::vector<int32_t>> generate(
      const std::vector<std::vector<int32_t>>& prompts, const SamplingOptions& o,
      const std::function<void(const std::vector<float>& logits)>& on_logits = {});

 private:
  void* p(int view) const;
  struct Work;
  // Runs layer l on x → y: the decode step (T = 1, sequences 0 … nb-1) or the prefill of
  // sequences b0 … b0+nb-1, right-padded to T tokens.
  void layer(int l, Work& w, const void* x, void* y, bool decode, int b0, int nb, int T);
  void head_chunk(int64_t row0, int64_t rows);  // logits_ = LM head of lnf rows [row0, row0 + rows)

  ModelSpec spec_;
  ParamLayout layout_;
  Backend& be_;
  DecoderSize size_;
  DecoderMemory mem_;
  std::vector<void*> allocations_;
  void* params_ = nullptr;
  std::vector<void*> k_cache_, v_cache_;  // per layer; null in reader layers
  std::vector<int> len_;
  // One set of activation buffers, [rows, ...]: the decode step's (rows = max_batch) and the
  // prefill's (rows = prefill tokens; k, v, k_rot, lse are prefill-only).
  struct Work {
    void *x = nullptr, *y = nullptr, *ln1 = nullptr, *ln2 = nullptr, *qkv = nullptr, *q = nullptr, *k = nullptr,
         *v = nullptr, *k_rot = nullptr, *attn = nullptr, *h = nullptr, *gelu = nullptr;
    float *mean = nullptr, *rstd = nullptr, *lse = nullptr;
  };
  Work dec_, pre_;
  void* lnf_ = nullptr;     // [max_batch, d]: final LayerNorm of each sequence's newest token
  void* logits_ = nullptr;  // [head_rows, V]
  int32_t *pos_dev_ = nullptr, *ids_dev_ = nullptr, *ptokens_ = nullptr;
};

}  // namespace mlkv
