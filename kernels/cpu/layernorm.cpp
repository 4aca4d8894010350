// LayerNorm over rows of C, fp32: out = (x − mean)·rstd·w + b, and its backward.
#include <cmath>

#include "kernels/cpu/cpu_backend.h"

namespace mlkv {

void CpuBackend::layernorm_forward(void* out_, float* mean, float* rstd, const void* in_, const void* w_,
                                   const void* b_, int64_t N, int C, float eps) {
  float* out = static_cast<float*>(out_);
  const float* in = static_cast<const float*>(in_);
  const float* w = static_cast<const float*>(w_);
  const float* b = static_cast<const float*>(b_);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* x = in + n * C;
    double m = 0;
    for (int c = 0; c < C; ++c) m += x[c];
    m /= C;
    double var = 0;
    for (int c = 0; c < C; ++c) var += (x[c] - m) * (x[c] - m);
    var /= C;
    const float r = static_cast<float>(1.0 / std::sqrt(var + eps));
    const float mf = static_cast<float>(m);
    for (int c = 0; c < C; ++c) out[n * C + c] = (x[c] - mf) * r * w[c] + b[c];
    mean[n] = mf;
    rstd[n] = r;
  }
}

// With xhat = (x − mean)·rstd and g = dout·w:
//   din += rstd·(g − mean(g) − xhat·mean(g·xhat));  dw += Σ dout·xhat;  db += Σ dout.
void CpuBackend::layernorm_backward(void* din_, float* dw, float* db, const void* dout_, const void* in_,
                                    const void* w_, const float* mean, const float* rstd, int64_t N, int C) {
  float* din = static_cast<float*>(din_);
  const float* dout = static_cast<const float*>(dout_);
  const float* in = static_cast<const float*>(in_);
  const float* w = static_cast<const float*>(w_);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* x = in + n * C;
    const float* go = dout + n * C;
    double sum_g = 0, sum_gx = 0;
    for (int c = 0; c < C; ++c) {
      const float xhat = (x[c] - mean[n]) * rstd[n];
      const float g = go[c] * w[c];
      sum_g += g;
      sum_gx += g * xhat;
    }
    const float mg = static_cast<float>(sum_g / C), mgx = static_cast<float>(sum_gx / C);
    for (int c = 0; c < C; ++c) {
      const float xhat = (x[c] - mean[n]) * rstd[n];
      din[n * C + c] += rstd[n] * (go[c] * w[c] - mg - xhat * mgx);
    }
  }
#pragma omp parallel for schedule(static)
  for (int c = 0; c < C; ++c) {
    float sw = 0, sb = 0;
    for (int64_t n = 0; n < N; ++n) {
      const float xhat = (in[n * C + c] - mean[n]) * rstd[n];
      sw += dout[n * C + c] * xhat;
      sb += dout[n * C + c];
    }
    dw[c] += sw;
    db[c] += sb;
  }
}

}  // namespace mlkv
