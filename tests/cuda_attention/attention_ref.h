// Host reference for the attention tests: bf16 rounding, and causal GQA/MLKV attention forward
// and backward in float64 with plain O(T²) loops, on the same layouts as kernels/cuda/attention.h:
// q[B, H, T, hd], k/v[B, KVH, T, hd], out/dout[B, T, H·hd], lse[B, H, T], dq[B, H, T, hd],
// dk/dv[B, KVH, T, hd]. Query head h reads KV head h / (H / KVH).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace mlkv::test {

inline uint16_t f32_to_bf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_f32(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// n normal(0, sd) values rounded to bf16: returns the bf16 bits and their exact float values.
inline void random_bf16(std::mt19937_64& rng, size_t n, float sd, std::vector<uint16_t>& bits,
                        std::vector<float>& vals) {
  std::normal_distribution<float> nd(0.f, sd);
  bits.resize(n);
  vals.resize(n);
  for (size_t i = 0; i < n; ++i) {
    bits[i] = f32_to_bf16(nd(rng));
    vals[i] = bf16_to_f32(bits[i]);
  }
}

struct AttnShape {
  int B, T, H, KVH, hd;
  size_t q_elems() const { return size_t(B) * H * T * hd; }
  size_t kv_elems() const { return size_t(B) * KVH * T * hd; }
  size_t vec_elems() const { return size_t(B) * H * T; }
};

// Probabilities of row t of (b, h): p[0..t], returns lse. Scores scaled by 1/sqrt(hd).
inline double ref_row_probs(const AttnShape& s, const float* q, const float* k, int b, int h, int t,
                            std::vector<double>& p) {
  const int g = h / (s.H / s.KVH);
  const float* qr = q + ((size_t(b) * s.H + h) * s.T + t) * s.hd;
  const float* kb = k + (size_t(b) * s.KVH + g) * s.T * s.hd;
  const double scale = 1.0 / std::sqrt(double(s.hd));
  p.assign(t + 1, 0.0);
  double mx = -INFINITY;
  for (int j = 0; j <= t; ++j) {
    double acc = 0;
    for (int d = 0; d < s.hd; ++d) acc += double(qr[d]) * kb[size_t(j) * s.hd + d];
    p[j] = acc * scale;
    mx = std::max(mx, p[j]);
  }
  double sum = 0;
  for (int j = 0; j <= t; ++j) sum += (p[j] = std::exp(p[j] - mx));
  for (int j = 0; j <= t; ++j) p[j] /= sum;
  return mx + std::log(sum);
}

// out[B, T, H·hd], lse[B, H, T].
inline void ref_forward(const AttnShape& s, const float* q, const float* k, const float* v, std::vector<double>& out,
                        std::vector<double>& lse) {
  out.assign(s.q_elems(), 0.0);
  lse.assign(s.vec_elems(), 0.0);
  std::vector<double> p;
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h) {
      const int g = h / (s.H / s.KVH);
      const float* vb = v + (size_t(b) * s.KVH + g) * s.T * s.hd;
      for (int t = 0; t < s.T; ++t) {
        lse[(size_t(b) * s.H + h) * s.T + t] = ref_row_probs(s, q, k, b, h, t, p);
        double* o = out.data() + (size_t(b) * s.T + t) * s.H * s.hd + size_t(h) * s.hd;
        for (int j = 0; j <= t; ++j)
          for (int d = 0; d < s.hd; ++d) o[d] += p[j] * vb[size_t(j) * s.hd + d];
      }
    }
}

// dq[B, H, T, hd] assigned; dk, dv[B, KVH, T, hd] accumulated (+=). Exact math: D = Σ_j P·dP.
inline void ref_backward(const AttnShape& s, const float* q, const float* k, const float* v, const float* dout,
                         std::vector<double>& dq, std::vector<double>& dk, std::vector<double>& dv) {
  dq.assign(s.q_elems(), 0.0);
  dk.resize(s.kv_elems(), 0.0);
  dv.resize(s.kv_elems(), 0.0);
  const double scale = 1.0 / std::sqrt(double(s.hd));
  std::vector<double> p, dp;
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h) {
      const int g = h / (s.H / s.KVH);
      const size_t kvo = (size_t(b) * s.KVH + g) * s.T * s.hd;
      for (int t = 0; t < s.T; ++t) {
        ref_row_probs(s, q, k, b, h, t, p);
        const float* dor = dout + (size_t(b) * s.T + t) * s.H * s.hd + size_t(h) * s.hd;
        const float* qr = q + ((size_t(b) * s.H + h) * s.T + t) * s.hd;
        double* dqr = dq.data() + ((size_t(b) * s.H + h) * s.T + t) * s.hd;
        dp.assign(t + 1, 0.0);
        double D = 0;
        for (int j = 0; j <= t; ++j) {
          double acc = 0;
          for (int d = 0; d < s.hd; ++d) acc += double(dor[d]) * v[kvo + size_t(j) * s.hd + d];
          dp[j] = acc;
          D += p[j] * acc;
        }
        for (int j = 0; j <= t; ++j) {
          const double ds = p[j] * (dp[j] - D) * scale;
          for (int d = 0; d < s.hd; ++d) {
            dqr[d] += ds * k[kvo + size_t(j) * s.hd + d];
            dk[kvo + size_t(j) * s.hd + d] += ds * qr[d];
            dv[kvo + size_t(j) * s.hd + d] += p[j] * dor[d];
          }
        }
      }
    }
}

}  // namespace mlkv::test
