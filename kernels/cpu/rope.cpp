// Head split and partial rotary (rotate_half layout, DESIGN §2), fp32.
//   qkv[B·T, (H + 2·KVH)·hd] → q[B, H, T, hd], k/v[B, KVH, T, hd]
// Rotary on the first `rot` dims: for i < rot/2, angle = t·base^(-2i/rot),
//   out[i] = x[i]·cos − x[i+rot/2]·sin,  out[i+rot/2] = x[i+rot/2]·cos + x[i]·sin.
// The backward applies the transpose (rotation by −angle).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"

namespace mlkv {

namespace {

struct RopeTable {
  int half;
  std::vector<float> cos, sin;  // [T, half]
  RopeTable(int T, int rot, float base) : half(rot / 2), cos(size_t(T) * half), sin(size_t(T) * half) {
    for (int i = 0; i < half; ++i) {
      // Computed in fp32 the way the HF reference does, so parity holds to the last bits we can.
      const float inv_freq = 1.0f / std::pow(base, static_cast<float>(2 * i) / static_cast<float>(rot));
      for (int t = 0; t < T; ++t) {
        const float a = static_cast<float>(t) * inv_freq;
        cos[size_t(t) * half + i] = std::cos(a);
        sin[size_t(t) * half + i] = std::sin(a);
      }
    }
  }
};

// Rotates one head vector x (length hd, in place on dst) at position t; sign = -1 inverts.
template <typename Src>
inline void rotate(float* dst, const Src* x, int hd, const RopeTable& rt, int t, float sign) {
  for (int e = 0; e < hd; ++e) dst[e] = static_cast<float>(x[e]);
  for (int i = 0; i < rt.half; ++i) {
    const float c = rt.cos[size_t(t) * rt.half + i], s = sign * rt.sin[size_t(t) * rt.half + i];
    const float a = static_cast<float>(x[i]), b = static_cast<float>(x[i + rt.half]);
    dst[i] = a * c - b * s;
    dst[i + rt.half] = b * c + a * s;
  }
}

}  // namespace

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
