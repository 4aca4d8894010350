// Linear layer, fp32: out[N, OC] = in[N, IC] · w[OC, IC]ᵀ + bias, and its backward, expressed
// through the one blocked GEMM kernel (gemm.h):
//   forward  out  = in · wᵀ          (wᵀ copied once per call: cheap next to the product)
//   backward din  = dout · w
//            dw  += doutᵀ · in       (doutᵀ copied once per call)
//            dbias += Σ_n dout[n, :]
#include <algorithm>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/gemm.h"

namespace mlkv {

void CpuBackend::matmul_forward(void* out_, const void* in_, const void* w_, const void* bias_, int64_t N, int IC,
                                int OC, bool accumulate) {
  float* out = static_cast<float*>(out_);
  const float* in = static_cast<const float*>(in_);
  const float* w = static_cast<const float*>(w_);
  const float* bias = static_cast<const float*>(bias_);
  std::vector<float> wt(static_cast<size_t>(IC) * OC);
  cpu::transpose(wt.data(), w, OC, IC);
  if (bias) {  // seed the output with the bias, then accumulate the product onto it
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n)
      for (int o = 0; o < OC; ++o) out[n * OC + o] = (accumulate ? out[n * OC + o] : 0.0f) + bias[o];
    accumulate = true;
  }
  cpu::gemm_nn(out, in, wt.data(), N, OC, IC, IC, OC, OC, accumulate);
}

void CpuBackend::matmul_backward(void* din_, float* dw, float* dbias, const void* dout_, const void* in_,
                                 const void* w_, int64_t N, int IC, int OC, bool accumulate_din) {
  float* din = static_cast<float*>(din_);
  const float* dout = static_cast<const float*>(dout_);
  const float* in = static_cast<const float*>(in_);
  const float* w = static_cast<const float*>(w_);
  if (din) cpu::gemm_nn(din, dout, w, N, IC, OC, OC, IC, IC, accumulate_din);
  if (!dw && !dbias) return;
  std::vector<float> dout_t(static_cast<size_t>(N) * OC);
  cpu::transpose(dout_t.data(), dout, N, OC);
  if (dw) cpu::gemm_nn(dw, dout_t.data(), in, OC, IC, N, N, IC, IC, true);
  if (dbias) {
#pragma omp parallel for schedule(static)
    for (int o = 0; o < OC; ++o) {
      float s = 0.0f;
      const float* row = dout_t.data() + int64_t{o} * N;
      for (int64_t n = 0; n < N; ++n) s += row[n];
      dbias[o] += s;
    }
  }
}

}  // namespace mlkv
