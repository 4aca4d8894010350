// Backend: the op interface the model is written against, once, for every device (DESIGN §5).
//
// kernels/cpu implements it in fp32 (the reference CI runs); kernels/cuda implements it with bf16
// activations and weights and fp32 accumulation. Conventions, as in llm.c:
//   * outputs come first; shapes are in the comments; N = B·T rows.
//   * "act" pointers hold the backend's compute dtype (fp32 on the CPU, bf16 on CUDA);
//     `float*` pointers are always fp32 (parameter gradients, saved statistics, group dK/dV sums).
//   * parameter gradients accumulate (+=); activation gradients are assigned unless a flag says so.
//   * all pointers are device pointers of this backend (host pointers on the CPU).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mlkv {

enum class Device { cpu, cuda };

struct AdamwStep {
  float lr = 0, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0;
  int64_t t = 1;           // 1-based step for bias correction
  float grad_scale = 1.0f; // applied to the gradient first (clipping, loss-scale undo)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;
  virtual int act_bytes() const = 0;  // 4 (fp32) or 2 (bf16)

  // ---- memory
  virtual void* alloc(size_t bytes) = 0;  // zero-filled
  virtual void release(void* p) = 0;
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t bytes) = 0;
  // n fp32 values from device memory into a new host vector (checkpoints, tests, logit dumps).
  std::vector<float> download_f32(const float* src, int64_t n) {
    std::vector<float> host(static_cast<size_t>(n));
    download(host.data(), src, host.size() * sizeof(float));
    return host;
  }
  virtual void zero(void* p, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // device to device
  virtual void synchronize() = 0;
  virtual size_t peak_memory_bytes() const { return 0; }

  // ---- casts (n elements)
  virtual void cast_f32_to_act(void* out, const float* in, int64_t n) = 0;
  virtual void cast_act_to_f32(float* out, const void* in, int64_t n) = 0;

  // ---- embedding: out[N, d] = wte[tokens[n], :]
  virtual void embedding_forward(void* out, const int32_t* tokens, const void* wte, int64_t N, int d) = 0;
  // dwte[V, d] += dout[n, :] at row tokens[n]. Deterministic (no float atomics).
  virtual void embedding_backward(float* dwte, const void* dout, const int32_t* tokens, int64_t N, int d,
                                  int64_t V) = 0;

  // ---- LayerNorm over rows of C: out[N, C]; mean[N], rstd[N] saved for the backward.
  virtual void layernorm_forward(void* out, float* mean, float* rstd, const void* in, const void* w,
                                 const void* b, int64_t N, int C, float eps) = 0;
  // din[N, C] += ..., dw[C] += ..., db[C] += ...
  virtual void layernorm_backward(void* din, float* dw, float* db, const void* dout, const void* in,
                                  const void* w, const float* mean, const float* rstd, int64_t N, int C) = 0;
  // The two LayerNorms of a GPT-NeoX layer normalise the same x (parallel residual): out1 = LN(x; w1, b1)
  // and out2 = LN(x; w2, b2) share one mean/rstd, and the backward adds both branches' input
  // gradients in one pass. These defaults run the single ops twice (the CPU reference does);
  // a backend may fuse them (the CUDA one does: one read of x instead of two, each way).
  virtual void layernorm_pair_forward(void* out1, void* out2, float* mean, float* rstd, const void* in,
                                      const void* w1, const void* b1, const void* w2, const void* b2, int64_t N,
                                      int C, float eps);
  virtual void layernorm_pair_backward(void* din, float* dw1, float* db1, float* dw2, float* db2, const void* dout1,
                                       const void* dout2, const void* in, const void* w1, const void* w2,
                                       const float* mean, const float* rstd, int64_t N, int C);

  // ---- linear: out[N, OC] (=, or += when accumulate) in[N, IC] · w[OC, IC]^T + bias[OC] (bias may be null)
  virtual void matmul_forward(void* out, const void* in, const void* w, const void* bias, int64_t N, int IC,
                              int OC, bool accumulate) = 0;
  // din[N, IC] (=, or += when accumulate_din) dout · w; dw[OC, IC] += dout^T · in; dbias[OC] += Σ_n dout.
  // din, dw and dbias may each be null (tensor parallelism computes din alone first, so that its
  // all-reduce overlaps the weight gradient).
  virtual void matmul_backward(void* din, float* dw, float* dbias, const void* dout, const void* in,
                               const void* w, int64_t N, int IC, int OC, bool accumulate_din) = 0;

  // ---- exact (erf) GELU, elementwise over n: out = gelu(in); din = gelu'(in) · dout
  // (din may alias dout: the model computes the gradient in place)
  virtual void gelu_forward(void* out, const void* in, int64_t n) = 0;
  virtual void gelu_backward(void* din, const void* in, const void* dout, int64_t n) = 0;
  // The same over in, dout [N, C], and dbias[C] += Σ_n din: the bias gradient of the projection
  // that produced `in`, which a backend may sum in the same pass. The default runs the two ops.
  virtual void gelu_backward_bias(void* din, float* dbias, const void* in, const void* dout, int64_t N, int C) {
    gelu_backward(din, in, dout, N * C);
    matmul_backward(nullptr, nullptr, dbias, din, nullptr, nullptr, N, 0, C, false);
  }

  // ---- y[n] += x[n]
  virtual void add_inplace(void* y, const void* x, int64_t n) = 0;

  // ---- split the fused projection into heads and apply rotary (rotate_half layout, DESIGN §2).
  // qkv[B·T, (H + 2·KVH)·hd] → q[B, H, T, hd], k[B, KVH, T, hd], v[B, KVH, T, hd]; KVH = 0 in
  // non-owner layers (then k and v are untouched). Rotary covers the first `rot` dims of q, and of k
  // when rotate_k, at positions 0..T-1 with inv_freq[i] = base^(-2i/rot).
  virtual void qkv_split_rope_forward(void* q, void* k, void* v, const void* qkv, int B, int T, int H, int KVH,
                                      int hd, int rot, float base, bool rotate_k) = 0;
  // dqkv[B·T, (H + 2·KVH)·hd] = the inverse of the above applied to dq (act) and the group's fp32
  // sums dk, dv (ignored when KVH = 0).
  virtual void qkv_split_rope_backward(void* dqkv, const void* dq, const float* dk, const float* dv, int B, int T,
                                       int H, int KVH, int hd, int rot, float base, bool rotate_k) = 0;
  // Rotary alone on x[BH, T, hd] → out (seed-paper compatibility: the owner's own rotated K).
  virtual void rope_forward(void* out, const void* x, int64_t BH, int T, int hd, int rot, float base) = 0;
  // dx[BH, T, hd] (fp32) += rope^-1(dout) with dout fp32.
  virtual void rope_backward_accumulate(float* dx, const float* dout, int64_t BH, int T, int hd, int rot,
                                        float base) = 0;

  // ---- causal attention, scale 1/sqrt(hd); query head h reads KV head h / (H / KVH).
  // out[B, T, H·hd] (heads merged, ready for the dense projection); lse[B, H, T] saved.
  virtual void attention_forward(void* out, float* lse, const void* q, const void* k, const void* v, int B, int T,
                                 int H, int KVH, int hd) = 0;
  // dq[B, H, T, hd] assigned; dk, dv[B, KVH, T, hd] fp32: this layer's sum over its query heads,
  // added to what they hold with `accumulate` (the group's sum over every layer that reads the
  // shared K/V), else assigned (the first such layer the backward reaches; no zeroing first).
  virtual void attention_backward(void* dq, float* dk, float* dv, const void* dout, const void* q, const void* k,
                                  const void* v, const void* out, const float* lse, int B, int T, int H, int KVH,
                                  int hd, bool accumulate) = 0;

  // Which attention implementation the two calls above use: train.attention, "auto" (the
  // faster measured path per head dim and query heads per KV head), "flash" (ours) or "cudnn".
  // This default has one attention and takes "auto" and "flash"; throws ConfigError for what the
  // backend lacks.
  virtual void select_attention(const std::string& impl);
  // The implementation attention at head dim hd with H query and KVH KV heads uses and why, for
  // the start-up line.
  virtual std::string attention_plan(int hd, int H, int KVH);

  // ---- decoding with a KV cache (core/decode.h). A cache holds, per owner layer, k/v[B, KVH, C, hd]
  // in the compute dtype (C = the context it was sized for; each sequence's valid prefix is its own).
  // cache[b, g, t, :] = src[b, g, t, :] for t < T: a prefill's K and V into positions 0 … T-1.
  virtual void kv_cache_store(void* k_cache, void* v_cache, const void* k, const void* v, int B, int KVH, int T,
                              int C, int hd) = 0;
  // One new token per sequence at position pos[b] (device int32[B]): qkv[B, (H + 2·KVH)·hd] →
  // q[B, H, hd] rotated at pos[b]; k (rotated when rotate_k) and v appended to the cache at
  // [b, g, pos[b], :]. KVH = 0 in reader layers (the caches are then untouched and may be null).
  virtual void qkv_rope_append(void* q, void* k_cache, void* v_cache, const void* qkv, const int32_t* pos, int B,
                               int H, int KVH, int hd, int C, int rot, float base, bool rotate_k) = 0;
  // out[B, H·hd] = softmax(q·Kᵀ/sqrt(hd))·V for the query of sequence b at position pos[b],
  // over the cached keys 0 … pos[b]; q[B, H, hd], query head h reads KV head h / (H / KVH).
  // rot_k > 0 rotates each key by its own position while reading it (the owner layer in
  // rope_shared_keys = false mode, whose cache holds the un-rotated K the readers need).
  virtual void decode_attention(void* out, const void* q, const void* k_cache, const void* v_cache,
                                const int32_t* pos, int B, int H, int KVH, int hd, int C, int rot_k, float base) = 0;
  // ids[N] = argmax over the V columns of logits[N, V] (act), the lowest index among ties.
  virtual void argmax_rows(int32_t* ids, const void* logits, int64_t N, int64_t V) = 0;

  // ---- softmax cross-entropy over V columns. losses[N] = -log softmax(logits[n])[targets[n]],
  // 0 where targets[n] < 0 (ignored). With compute_grad, logits is overwritten in place by
  // dloss · (softmax − onehot) (zero rows where ignored).
  virtual void cross_entropy(float* losses, void* logits, const int32_t* targets, int64_t N, int64_t V,
                             float dloss, bool compute_grad) = 0;

  // ---- optimizer: AdamW with decoupled weight decay on n fp32 master weights; refreshes the
  // compute copy act_params when it is not null and not the master itself.
  virtual void adamw_update(float* master, void* act_params, const float* grad, float* m, float* v, int64_t n,
                            const AdamwStep& s) = 0;
  // Σ x² in double on the host (blocks).
  virtual double sum_squares(const float* x, int64_t n) = 0;
  // Σ x in double on the host (blocks).
  virtual double sum(const float* x, int64_t n) = 0;
};

// Picks "cpu", "cuda" or "auto" (cuda when a GPU is present). Throws ConfigError for unknown or
// unavailable backends. `threads` sizes the CPU backend's pool (0 = all cores).
std::unique_ptr<Backend> make_backend(const std::string& which, int threads = 0, int device_index = 0);
struct TrainSection;  // core/config.h
// The backend a config's [train] section asks for: train.backend and train.threads, with
// train.attention selected. Every executable makes its backend this way.
std::unique_ptr<Backend> make_backend(const TrainSection& train, int device_index = 0);
bool cuda_available();

}  // namespace mlkv
