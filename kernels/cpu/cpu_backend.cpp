// CpuBackend: memory, casts, elementwise ops and reductions. Ops with more structure live in
// their own files beside this one.
#include "kernels/cpu/cpu_backend.h"

#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <vector>

#include "core/errors.h"

namespace mlkv {

CpuBackend::CpuBackend(int threads) : threads_(threads > 0 ? threads : omp_get_num_procs()) {
  omp_set_num_threads(threads_);
}

std::string CpuBackend::name() const { return "cpu-fp32 (" + std::to_string(threads_) + " threads)"; }

// The allocation size is stored in front of the block so release() can keep the live count.
void* CpuBackend::alloc(size_t bytes) {
  constexpr size_t kHeader = 64;
  void* raw = std::aligned_alloc(64, (bytes + kHeader + 63) / 64 * 64);
  if (!raw) throw Error("cpu backend: out of memory allocating " + std::to_string(bytes) + " bytes");
  std::memset(raw, 0, bytes + kHeader);
  *static_cast<size_t*>(raw) = bytes;
  live_ += bytes;
  if (live_ > peak_) peak_ = live_;
  return static_cast<char*>(raw) + kHeader;
}

void CpuBackend::release(void* p) {
  if (!p) return;
  void* raw = static_cast<char*>(p) - 64;
  live_ -= *static_cast<size_t*>(raw);
  std::free(raw);
}

void CpuBackend::upload(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void CpuBackend::download(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void CpuBackend::zero(void* p, size_t bytes) { std::memset(p, 0, bytes); }
void CpuBackend::copy(void* dst, const void* src, size_t bytes) { std::memmove(dst, src, bytes); }

void CpuBackend::cast_f32_to_act(void* out, const float* in, int64_t n) { copy(out, in, n * sizeof(float)); }
void CpuBackend::cast_act_to_f32(float* out, const void* in, int64_t n) { copy(out, in, n * sizeof(float)); }

void CpuBackend::add_inplace(void* y_, const void* x_, int64_t n) {
  float* y = static_cast<float*>(y_);
  const float* x = static_cast<const float*>(x_);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

// Exact GELU: x·Φ(x) with Φ the normal CDF via erf.
void CpuBackend::gelu_forward(void* out_, const void* in_, int64_t n) {
  float* out = static_cast<float*>(out_);
  const float* in = static_cast<const float*>(in_);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = 0.5f * in[i] * (1.0f + std::erf(in[i] * 0.70710678118654752f));
}

// d/dx [x·Φ(x)] = Φ(x) + x·φ(x)
void CpuBackend::gelu_backward(void* din_, const void* in_, const void* dout_, int64_t n) {
  float* din = static_cast<float*>(din_);
  const float* in = static_cast<const float*>(in_);
  const float* dout = static_cast<const float*>(dout_);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float x = in[i];
    const float cdf = 0.5f * (1.0f + std::erf(x * 0.70710678118654752f));
    const float pdf = 0.3989422804014327f * std::exp(-0.5f * x * x);
    din[i] = dout[i] * (cdf + x * pdf);
  }
}

// Reductions sum fixed 4096-element chunks in parallel, then the chunks in order: the result
// does not depend on the thread count.
template <typename F>
static double chunked_sum(int64_t n, F term) {
  constexpr int64_t kChunk = 4096;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    double s = 0;
    for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) s += term(i);
    partial[c] = s;
  }
  double s = 0;
  for (double p : partial) s += p;
  return s;
}

double CpuBackend::sum_squares(const float* x, int64_t n) {
  return chunked_sum(n, [x](int64_t i) { return static_cast<double>(x[i]) * x[i]; });
}
double CpuBackend::sum(const float* x, int64_t n) {
  return chunked_sum(n, [x](int64_t i) { return static_cast<double>(x[i]); });
}

// AdamW with decoupled weight decay (Loshchilov & Hutter): p -= lr·(m̂/(√v̂+eps) + wd·p).
void CpuBackend::adamw_update(float* master, void* act_params, const float* grad, float* m, float* v, int64_t n,
                              const AdamwStep& s) {
  const float bc1 = 1.0f - std::pow(s.beta1, static_cast<float>(s.t));
  const float bc2 = 1.0f - std::pow(s.beta2, static_cast<float>(s.t));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] * s.grad_scale;
    m[i] = s.beta1 * m[i] + (1.0f - s.beta1) * g;
    v[i] = s.beta2 * v[i] + (1.0f - s.beta2) * g * g;
    const float mhat = m[i] / bc1, vhat = v[i] / bc2;
    master[i] -= s.lr * (mhat / (std::sqrt(vhat) + s.eps) + s.weight_decay * master[i]);
  }
  if (act_params && act_params != master) cast_f32_to_act(act_params, master, n);
}

}  // namespace mlkv
