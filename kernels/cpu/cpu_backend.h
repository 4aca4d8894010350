// CpuBackend: the fp32 reference implementation of every op in core/backend.h.
// Every output element is produced by exactly one thread with a fixed loop order, so results are
// bitwise identical run to run and for any thread count (resume bit-exactness relies on this).
// The op bodies live one file per op (matmul.cpp, layernorm.cpp, attention.cpp, ...), each
// with its forward and backward side by side.
#pragma once
#include "core/backend.h"

namespace mlkv {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads);
  Device device() const override { return Device::cpu; }
  std::string name() const override;
  int act_bytes() const override { return 4; }

  void* alloc(size_t bytes) override;
  void release(void* p) override;
  void upload(void* dst, const void* src, size_t bytes) override;
  void download(void* dst, const void* src, size_t bytes) override;
  void zero(void* p, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void synchronize() override {}
  size_t peak_memory_bytes() const override { return peak_; }

  void cast_f32_to_act(void* out, const float* in, int64_t n) override;
  void cast_act_to_f32(float* out, const void* in, int64_t n) override;
  void embedding_forward(void* out, const int32_t* tokens, const void* wte, int64_t N, int d) override;
  void embedding_backward(float* dwte, const void* dout, const int32_t* tokens, int64_t N, int d,
                          int64_t V) override;
  void layernorm_forward(void* out, float* mean, float* rstd, const void* in, const void* w, const void* b,
                         int64_t N, int C, float eps) override;
  void layernorm_backward(void* din, float* dw, float* db, const void* dout, const void* in, const void* w,
                          const float* mean, const float* rstd, int64_t N, int C) override;
  void matmul_forward(void* out, const void* in, const void* w, const void* bias, int64_t N, int IC, int OC,
                      bool accumulate) override;
  void matmul_backward(void* din, float* dw, float* dbias, const void* dout, const void* in, const void* w,
                       int64_t N, int IC, int OC, bool accumulate_din) override;
  void gelu_forward(void* out, const void* in, int64_t n) override;
  void gelu_backward(void* din, const void* in, const void* dout, int64_t n) override;
  void add_inplace(void* y, const void* x, int64_t n) override;
  void qkv_split_rope_forward(void* q, void* k, void* v, const void* qkv, int B, int T, int H, int KVH, int hd,
                              int rot, float base, bool rotate_k) override;
  void qkv_split_rope_backward(void* dqkv, const void* dq, const float* dk, const float* dv, int B, int T, int H,
                               int KVH, int hd, int rot, float base, bool rotate_k) override;
  void rope_forward(void* out, const void* x, int64_t BH, int T, int hd, int rot, float base) override;
  void rope_backward_accumulate(float* dx, const float* dout, int64_t BH, int T, int hd, int rot,
                                float base) override;
  void attention_forward(void* out, float* lse, const void* q, const void* k, const void* v, int B, int T, int H,
                         int KVH, int hd) override;
  void attention_backward(void* dq, float* dk, float* dv, const void* dout, const void* q, const void* k,
                          const void* v, const void* out, const float* lse, int B, int T, int H, int KVH,
                          int hd, bool accumulate) override;
  void kv_cache_store(void* k_cache, void* v_cache, const void* k, const void* v, int B, int KVH, int T, int C,
                      int hd) override;
  void qkv_rope_append(void* q, void* k_cache, void* v_cache, const void* qkv, const int32_t* pos, int B, int H,
                       int KVH, int hd, int C, int rot, float base, bool rotate_k) override;
  void decode_attention(void* out, const void* q, const void* k_cache, const void* v_cache, const int32_t* pos,
                        int B, int H, int KVH, int hd, int C, int rot_k, float base) override;
  void argmax_rows(int32_t* ids, const void* logits, int64_t N, int64_t V) override;
  // One reference attention serves "auto", "flash" and "cudnn": a CUDA config runs unchanged here.
  void select_attention(const std::string& impl) override {
    if (impl != "cudnn") Backend::select_attention(impl);
  }
  void cross_entropy(float* losses, void* logits, const int32_t* targets, int64_t N, int64_t V, float dloss,
                     bool compute_grad) override;
  void adamw_update(float* master, void* act_params, const float* grad, float* m, float* v, int64_t n,
                    const AdamwStep& s) override;
  double sum_squares(const float* x, int64_t n) override;
  double sum(const float* x, int64_t n) override;

 private:
  int threads_;
  size_t live_ = 0, peak_ = 0;
};

}  // namespace mlkv
