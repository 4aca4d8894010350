// Head split and partial rotary (rotate_half layout, DESIGN §2), fp32.
//   qkv[B·T, (H + 2·KVH)·hd] → q[B, H, T, hd], k/v[B, KVH, T, hd]
// Rotary on the first `rot` dims: for i < rot/2, angle = t·base^(-2i/rot),
//   out[i] = x[i]·cos − x[i+rot/2]·sin,  out[i+rot/2] = x[i+rot/2]·cos + x[i]·sin.
// The backward applies the transpose (rotation by −angle).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/rope_table.h"

namespace mlkv {

using cpu_rope::RopeTable;
using cpu_rope::rotate;

void CpuBackend::qkv_split_rope_forward(void* q_, void* k_, void* v_, const void* qkv_, int B, int T, int H,
                                        int KVH, int hd, int rot, float base, bool rotate_k) {
  const float* qkv = static_cast<const float*>(qkv_);
  float *q = static_cast<float*>(q_), *k = static_cast<float*>(k_), *v = static_cast<float*>(v_);
  const RopeTable rt(T, rot, base);
  const int64_t row = int64_t{H + 2 * KVH} * hd;
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) {
      const float* src = qkv + (int64_t{b} * T + t) * row;
      for (int h = 0; h < H; ++h) rotate(q + ((int64_t{b} * H + h) * T + t) * hd, src + h * hd, hd, rt, t, 1.0f);
      for (int g = 0; g < KVH; ++g) {
        const float* ks = src + (H + g) * hd;
        float* kd = k + ((int64_t{b} * KVH + g) * T + t) * hd;
        if (rotate_k) rotate(kd, ks, hd, rt, t, 1.0f);
        else std::copy_n(ks, hd, kd);
        std::copy_n(src + (H + KVH + g) * hd, hd, v + ((int64_t{b} * KVH + g) * T + t) * hd);
      }
    }
}

void CpuBackend::qkv_split_rope_backward(void* dqkv_, const void* dq_, const float* dk, const float* dv, int B,
                                         int T, int H, int KVH, int hd, int rot, float base, bool rotate_k) {
  float* dqkv = static_cast<float*>(dqkv_);
  const float* dq = static_cast<const float*>(dq_);
  const RopeTable rt(T, rot, base);
  const int64_t row = int64_t{H + 2 * KVH} * hd;
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) {
      float* dst = dqkv + (int64_t{b} * T + t) * row;
      for (int h = 0; h < H; ++h) rotate(dst + h * hd, dq + ((int64_t{b} * H + h) * T + t) * hd, hd, rt, t, -1.0f);
      for (int g = 0; g < KVH; ++g) {
        const float* dks = dk + ((int64_t{b} * KVH + g) * T + t) * hd;
        if (rotate_k) rotate(dst + (H + g) * hd, dks, hd, rt, t, -1.0f);
        else std::copy_n(dks, hd, dst + (H + g) * hd);
        std::copy_n(dv + ((int64_t{b} * KVH + g) * T + t) * hd, hd, dst + (H + KVH + g) * hd);
      }
    }
}

void CpuBackend::rope_forward(void* out_, const void* x_, int64_t BH, int T, int hd, int rot, float base) {
  float* out = static_cast<float*>(out_);
  const float* x = static_cast<const float*>(x_);
  const RopeTable rt(T, rot, base);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t bh = 0; bh < BH; ++bh)
    for (int t = 0; t < T; ++t) rotate(out + (bh * T + t) * hd, x + (bh * T + t) * hd, hd, rt, t, 1.0f);
}

void CpuBackend::rope_backward_accumulate(float* dx, const float* dout, int64_t BH, int T, int hd, int rot,
                                          float base) {
  const RopeTable rt(T, rot, base);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t bh = 0; bh < BH; ++bh)
    for (int t = 0; t < T; ++t) {
      std::vector<float> tmp(hd);
      rotate(tmp.data(), dout + (bh * T + t) * hd, hd, rt, t, -1.0f);
      for (int e = 0; e < hd; ++e) dx[(bh * T + t) * hd + e] += tmp[e];
    }
}

}  // namespace mlkv
