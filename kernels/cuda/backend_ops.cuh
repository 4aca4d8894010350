// Internal to the CUDA backend: error checks, bf16 vector helpers, the shared scratch buffer and
// the launchers each kernels/cuda/<op>.cu defines. Included by the CUDA sources (the .cu files,
// and cudnn_attention.cpp for the launchers; device helpers are nvcc-only), never with TOML++.
// Conventions as in core/backend.h: outputs first, bf16 = activations/weights, float = fp32.
#pragma once
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/backend.h"

namespace mlkv::cuda {

using bf16 = __nv_bfloat16;

// Throws mlkv::Error("file:line: what: <CUDA error string>").
[[noreturn]] void throw_cuda_error(cudaError_t e, const char* what, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t s, const char* what, const char* file, int line);
#define MLKV_CUDA_CHECK(expr)                                                                   \
  do {                                                                                          \
    cudaError_t e_ = (expr);                                                                    \
    if (e_ != cudaSuccess) ::mlkv::cuda::throw_cuda_error(e_, #expr, __FILE__, __LINE__);       \
  } while (0)
#define MLKV_CUBLAS_CHECK(expr)                                                                 \
  do {                                                                                          \
    cublasStatus_t s_ = (expr);                                                                 \
    if (s_ != CUBLAS_STATUS_SUCCESS) ::mlkv::cuda::throw_cublas_error(s_, #expr, __FILE__, __LINE__); \
  } while (0)
// After every launch: a bad configuration surfaces here, not at the next unrelated call.
#define MLKV_LAUNCH_CHECK() MLKV_CUDA_CHECK(cudaGetLastError())

// One growable stream-ordered buffer shared by every op that needs temporaries (all ops run on
// one stream, so a later op reusing it can never overlap an earlier one).
class Scratch {
 public:
  explicit Scratch(cudaStream_t s) : stream_(s) {}
  ~Scratch();
  void* get(size_t bytes);  // valid until the next get()
  size_t capacity() const { return bytes_; }

 private:
  cudaStream_t stream_;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
// Grid size for grid-stride loops: enough blocks to fill the chip a few times over.
int grid_for(int64_t work_items, int block);

// ---- device helpers
#ifdef __CUDACC__
struct alignas(16) Bf16x8 {
  __nv_bfloat162 h[4];
};
__device__ __forceinline__ void load8(const bf16* p, float (&f)[8]) {
  const Bf16x8 x = *reinterpret_cast<const Bf16x8*>(p);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(x.h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}
__device__ __forceinline__ void store8(bf16* p, const float (&f)[8]) {
  Bf16x8 x;
#pragma unroll
  for (int i = 0; i < 4; ++i) x.h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  *reinterpret_cast<Bf16x8*>(p) = x;
}
// cos/sin of the rotary angle t·inv_freq[i], i < rot/2, with inv_freq = 1/base^(2i/rot) computed
// in fp32 as the CPU reference and HF compute it (parity to the last bits). rope.cu and the
// decode ops (decode.cu) rotate with it, so a cached key equals the full forward's.
__device__ __forceinline__ void rope_angle(int t, int i, int rot, float base, float& c, float& s) {
  const float inv_freq = 1.0f / powf(base, static_cast<float>(2 * i) / static_cast<float>(rot));
  sincosf(static_cast<float>(t) * inv_freq, &s, &c);
}
// d/dx of the exact (erf) GELU x·Φ(x): Φ(x) + x·φ(x). gelu.cu's backward and colsum.cu's fused
// GELU backward with bias gradient use this one definition, so their din are bitwise the same.
__device__ __forceinline__ float gelu_grad(float x) {
  const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
  const float pdf = 0.3989422804014327f * __expf(-0.5f * x * x);
  return cdf + x * pdf;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
#endif

// ---- cuBLASLt GEMMs (matmul_cublaslt.cu). Row-major shapes as in core/backend.h.
class Gemm {
 public:
  Gemm(cudaStream_t s);
  ~Gemm();
  // out[N, OC] (=, or += when accumulate) in[N, IC] · w[OC, IC]^T (+ bias[OC] through the epilogue)
  void forward(bf16* out, const bf16* in, const bf16* w, const bf16* bias, int64_t N, int IC, int OC,
               bool accumulate);
  // din[N, IC] (=, or +=) dout[N, OC] · w[OC, IC]
  void backward_input(bf16* din, const bf16* dout, const bf16* w, int64_t N, int IC, int OC, bool accumulate);
  // dw[OC, IC] (fp32) += dout^T · in, and with dbias, dbias[OC] += Σ_n dout through the GEMM's
  // BGRADB epilogue when MLKV_GEMM_BGRAD=1 (the colsum pass's read of dout saved). False when dbias
  // was given but the epilogue is off or this shape has no such algorithm: then dw is done and the
  // caller sums dbias.
  bool backward_weight(float* dw, float* dbias, const bf16* dout, const bf16* in, int64_t N, int IC, int OC);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- column sums (colsum.cu): deterministic two-pass reductions over the N rows of [N, C].
// dbias[C] += Σ_n dout[n, :]
void bias_grad(float* dbias, const bf16* dout, int64_t N, int C, Scratch& scratch, cudaStream_t s);
// out0[c] += Σ_r part0[r, c] (and out1 from part1 when out1 is given), rows r in order.
void add_partial_rows(float* out0, float* out1, const float* part0, const float* part1, int rows, int C,
                      cudaStream_t s);
// din[N, C] = gelu'(in)·dout (bf16; din may alias dout) and dbias[C] += Σ_n din in one pass:
// the same din as gelu_backward and bitwise the same dbias as bias_grad(din) after it.
void gelu_backward_bias_grad(bf16* din, float* dbias, const bf16* in, const bf16* dout, int64_t N, int C,
                             Scratch& scratch, cudaStream_t s);
// dw[C] += Σ_n dout·(in − mean[n])·rstd[n],  db[C] += Σ_n dout
void layernorm_param_grads(float* dw, float* db, const bf16* dout, const bf16* in, const float* mean,
                           const float* rstd, int64_t N, int C, Scratch& scratch, cudaStream_t s);

// ---- layernorm.cu
void layernorm_forward(bf16* out, float* mean, float* rstd, const bf16* in, const bf16* w, const bf16* b,
                       int64_t N, int C, float eps, cudaStream_t s);
void layernorm_backward(bf16* din, float* dw, float* db, const bf16* dout, const bf16* in, const bf16* w,
                        const float* mean, const float* rstd, int64_t N, int C, Scratch& scratch, cudaStream_t s);
// The two LayerNorms of one x in one pass (see Backend::layernorm_pair_*). false: the shape or
// alignment is not one the fused kernels take, nothing was done, the caller runs the pair apart.
bool layernorm_pair_forward(bf16* out1, bf16* out2, float* mean, float* rstd, const bf16* in, const bf16* w1,
                            const bf16* b1, const bf16* w2, const bf16* b2, int64_t N, int C, float eps,
                            cudaStream_t s);
bool layernorm_pair_backward(bf16* din, float* dw1, float* db1, float* dw2, float* db2, const bf16* dout1,
                             const bf16* dout2, const bf16* in, const bf16* w1, const bf16* w2, const float* mean,
                             const float* rstd, int64_t N, int C, Scratch& scratch, cudaStream_t s);

// ---- embedding.cu
void embedding_forward(bf16* out, const int32_t* tokens, const bf16* wte, int64_t N, int d, cudaStream_t s);
void embedding_backward(float* dwte, const bf16* dout, const int32_t* tokens, int64_t N, int d, int64_t V,
                        Scratch& scratch, cudaStream_t s);

// ---- gelu.cu (also the residual add)
void gelu_forward(bf16* out, const bf16* in, int64_t n, cudaStream_t s);
void gelu_backward(bf16* din, const bf16* in, const bf16* dout, int64_t n, cudaStream_t s);
void add_inplace(bf16* y, const bf16* x, int64_t n, cudaStream_t s);

// ---- rope.cu
void qkv_split_rope_forward(bf16* q, bf16* k, bf16* v, const bf16* qkv, int B, int T, int H, int KVH, int hd,
                            int rot, float base, bool rotate_k, cudaStream_t s);
void qkv_split_rope_backward(bf16* dqkv, const bf16* dq, const float* dk, const float* dv, int B, int T, int H,
                             int KVH, int hd, int rot, float base, bool rotate_k, cudaStream_t s);
void rope_forward(bf16* out, const bf16* x, int64_t BH, int T, int hd, int rot, float base, cudaStream_t s);
void rope_backward_accumulate(float* dx, const float* dout, int64_t BH, int T, int hd, int rot, float base,
                              cudaStream_t s);

// ---- cross_entropy.cu
void cross_entropy(float* losses, bf16* logits, const int32_t* targets, int64_t N, int64_t V, float dloss,
                   bool compute_grad, cudaStream_t s);

// ---- adamw.cu
void adamw_update(float* master, bf16* act_params, const float* grad, float* m, float* v, int64_t n,
                  const AdamwStep& step, cudaStream_t s);

// ---- reduce.cu: Σ x² or Σ x in double, deterministic; blocks on the stream.
double reduce_sum(const float* x, int64_t n, bool squares, Scratch& scratch, cudaStream_t s);

// ---- decode.cu: the KV-cache ops of core/backend.h ("decoding"), shapes as documented there.
void kv_cache_store(bf16* k_cache, bf16* v_cache, const bf16* k, const bf16* v, int B, int KVH, int T, int C, int hd,
                    cudaStream_t s);
void qkv_rope_append(bf16* q, bf16* k_cache, bf16* v_cache, const bf16* qkv, const int32_t* pos, int B, int H,
                     int KVH, int hd, int C, int rot, float base, bool rotate_k, cudaStream_t s);
void decode_attention(bf16* out, const bf16* q, const bf16* k_cache, const bf16* v_cache, const int32_t* pos, int B,
                      int H, int KVH, int hd, int C, int rot_k, float base, Scratch& scratch, cudaStream_t s);
// Context splits decode_attention uses for B sequences × KVH heads over a cache of C positions.
int decode_attention_splits(int B, int KVH, int C);
void argmax_rows(int32_t* ids, const bf16* logits, int64_t N, int64_t V, cudaStream_t s);

// ---- cast.cu
void cast_f32_to_bf16(bf16* out, const float* in, int64_t n, cudaStream_t s);
void cast_bf16_to_f32(float* out, const bf16* in, int64_t n, cudaStream_t s);
// out[n] (fp32) += in[n] (bf16): the cuDNN attention's per-layer dK/dV into the group sums.
void add_bf16_to_f32(float* out, const bf16* in, int64_t n, cudaStream_t s);

}  // namespace mlkv::cuda
