// Causal multi-head attention with grouped, layer-shared K/V (MLKV), fp32 reference.
//   q[B, H, T, hd], k/v[B, KVH, T, hd] → out[B, T, H·hd], lse[B, H, T]
// Query head h reads KV head h / (H/KVH). The backward recomputes the probabilities from lse
// and ACCUMULATES dk/dv, so one buffer sums the gradient over every query head of a group and
// every layer sharing the K/V (DESIGN §3b). Threads split (b, kv head): each owns its dk/dv.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"

namespace mlkv {

void CpuBackend::attention_forward(void* out_, float* lse, const void* q_, const void* k_, const void* v_, int B,
                                   int T, int H, int KVH, int hd) {
  float* out = static_cast<float*>(out_);
  const float *q = static_cast<const float*>(q_), *k = static_cast<const float*>(k_),
              *v = static_cast<const float*>(v_);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int group = H / KVH;
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const int g = h / group;
      const float* kb = k + (int64_t{b} * KVH + g) * T * hd;
      const float* vb = v + (int64_t{b} * KVH + g) * T * hd;
      std::vector<float> p(T);
      for (int t = 0; t < T; ++t) {
        const float* qt = q + ((int64_t{b} * H + h) * T + t) * hd;
        float mx = -INFINITY;
        for (int s = 0; s <= t; ++s) {
          float dotv = 0;
          for (int e = 0; e < hd; ++e) dotv += qt[e] * kb[int64_t{s} * hd + e];
          p[s] = dotv * scale;
          mx = std::max(mx, p[s]);
        }
        double denom = 0;
        for (int s = 0; s <= t; ++s) denom += (p[s] = std::exp(p[s] - mx));
        float* o = out + (int64_t{b} * T + t) * H * hd + int64_t{h} * hd;
        for (int e = 0; e < hd; ++e) o[e] = 0;
        const float inv = static_cast<float>(1.0 / denom);
        for (int s = 0; s <= t; ++s)
          for (int e = 0; e < hd; ++e) o[e] += p[s] * inv * vb[int64_t{s} * hd + e];
        lse[(int64_t{b} * H + h) * T + t] = mx + static_cast<float>(std::log(denom));
      }
    }
}

// With P = softmax(S), S = scale·q·kᵀ:  dv += Pᵀ·dout;  dP = dout·vᵀ;  D = rowsum(dout∘out);
// dS = P∘(dP − D);  dq = scale·dS·k;  dk += scale·dSᵀ·q (after zeroing dk, dv when not accumulating).
void CpuBackend::attention_backward(void* dq_, float* dk, float* dv, const void* dout_, const void* q_,
                                    const void* k_, const void* v_, const void* out_, const float* lse, int B, int T,
                                    int H, int KVH, int hd, bool accumulate) {
  float* dq = static_cast<float*>(dq_);
  const float *dout = static_cast<const float*>(dout_), *q = static_cast<const float*>(q_),
              *k = static_cast<const float*>(k_), *v = static_cast<const float*>(v_),
              *out = static_cast<const float*>(out_);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int group = H / KVH;
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int g = 0; g < KVH; ++g) {
      const float* kb = k + (int64_t{b} * KVH + g) * T * hd;
      const float* vb = v + (int64_t{b} * KVH + g) * T * hd;
      float* dkb = dk + (int64_t{b} * KVH + g) * T * hd;
      float* dvb = dv + (int64_t{b} * KVH + g) * T * hd;
      if (!accumulate) {
        std::fill(dkb, dkb + int64_t{T} * hd, 0.0f);
        std::fill(dvb, dvb + int64_t{T} * hd, 0.0f);
      }
      std::vector<float> p(T), dp(T);
      for (int h = g * group; h < (g + 1) * group; ++h)
        for (int t = 0; t < T; ++t) {
          const float* qt = q + ((int64_t{b} * H + h) * T + t) * hd;
          const float* dot_ = dout + (int64_t{b} * T + t) * H * hd + int64_t{h} * hd;
          const float* ot = out + (int64_t{b} * T + t) * H * hd + int64_t{h} * hd;
          const float l = lse[(int64_t{b} * H + h) * T + t];
          float D = 0;
          for (int e = 0; e < hd; ++e) D += dot_[e] * ot[e];
          float* dqt = dq + ((int64_t{b} * H + h) * T + t) * hd;
          for (int e = 0; e < hd; ++e) dqt[e] = 0;
          for (int s = 0; s <= t; ++s) {
            float sc = 0, dps = 0;
            for (int e = 0; e < hd; ++e) {
              sc += qt[e] * kb[int64_t{s} * hd + e];
              dps += dot_[e] * vb[int64_t{s} * hd + e];
            }
            const float ps = std::exp(sc * scale - l);
            const float ds = ps * (dps - D) * scale;
            for (int e = 0; e < hd; ++e) {
              dvb[int64_t{s} * hd + e] += ps * dot_[e];
              dkb[int64_t{s} * hd + e] += ds * qt[e];
              dqt[e] += ds * kb[int64_t{s} * hd + e];
            }
          }
        }
    }
}

}  // namespace mlkv
