// Linear layer, fp32: out[N, OC] = in[N, IC] · w[OC, IC]^T + bias, and its backward.
// Forward rows are dot products with 8 independent partial sums (vectorisable without
// -ffast-math, fixed order so bitwise reproducible); backward terms are axpys.
#include <algorithm>

#include "kernels/cpu/cpu_backend.h"

namespace mlkv {

static inline float dot(const float* a, const float* b, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int k = 0;
  for (; k + 8 <= n; k += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[k + j] * b[k + j];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; k < n; ++k) s += a[k] * b[k];
  return s;
}

void CpuBackend::matmul_forward(void* out_, const void* in_, const void* w_, const void* bias_, int64_t N, int IC,
                                int OC, bool accumulate) {
  float* out = static_cast<float*>(out_);
  const float* in = static_cast<const float*>(in_);
  const float* w = static_cast<const float*>(w_);
  const float* bias = static_cast<const float*>(bias_);
  // Blocks of 64 output columns keep a slab of w in cache while all rows stream past it.
  constexpr int kCols = 64;
  const int col_blocks = (OC + kCols - 1) / kCols;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n0 = 0; n0 < N; n0 += 16)
    for (int cb = 0; cb < col_blocks; ++cb)
      for (int64_t n = n0; n < std::min(N, n0 + 16); ++n)
        for (int o = cb * kCols; o < std::min(OC, (cb + 1) * kCols); ++o) {
          const float r = dot(in + n * IC, w + int64_t{o} * IC, IC) + (bias ? bias[o] : 0.0f);
          float& dst = out[n * OC + o];
          dst = accumulate ? dst + r : r;
        }
}

void CpuBackend::matmul_backward(void* din_, float* dw, float* dbias, const void* dout_, const void* in_,
                                 const void* w_, int64_t N, int IC, int OC, bool accumulate_din) {
  float* din = static_cast<float*>(din_);
  const float* dout = static_cast<const float*>(dout_);
  const float* in = static_cast<const float*>(in_);
  const float* w = static_cast<const float*>(w_);
  if (din) {
    // din[n, :] (+)= Σ_o dout[n, o] · w[o, :]
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      float* row = din + n * IC;
      if (!accumulate_din) std::fill(row, row + IC, 0.0f);
      for (int o = 0; o < OC; ++o) {
        const float g = dout[n * OC + o];
        const float* wr = w + int64_t{o} * IC;
        for (int i = 0; i < IC; ++i) row[i] += g * wr[i];
      }
    }
  }
  // dw[o, :] += Σ_n dout[n, o] · in[n, :];  dbias[o] += Σ_n dout[n, o]
#pragma omp parallel for schedule(static)
  for (int o = 0; o < OC; ++o) {
    float* wr = dw + int64_t{o} * IC;
    float bsum = 0.0f;
    for (int64_t n = 0; n < N; ++n) {
      const float g = dout[n * OC + o];
      bsum += g;
      const float* xr = in + n * IC;
      for (int i = 0; i < IC; ++i) wr[i] += g * xr[i];
    }
    if (dbias) dbias[o] += bsum;
  }
}

}  // namespace mlkv
