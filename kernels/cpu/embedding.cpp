// Token embedding, fp32: out[n, :] = wte[tokens[n], :], and the scatter-add backward.
#include <algorithm>

#include "kernels/cpu/cpu_backend.h"

namespace mlkv {

void CpuBackend::embedding_forward(void* out_, const int32_t* tokens, const void* wte_, int64_t N, int d) {
  float* out = static_cast<float*>(out_);
  const float* wte = static_cast<const float*>(wte_);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) std::copy_n(wte + int64_t{tokens[n]} * d, d, out + n * d);
}

// Threads split the d columns, and each walks the tokens in order: deterministic.
void CpuBackend::embedding_backward(float* dwte, const void* dout_, const int32_t* tokens, int64_t N, int d,
                                    int64_t /*V*/) {
  const float* dout = static_cast<const float*>(dout_);
  constexpr int kCols = 16;
#pragma omp parallel for schedule(static)
  for (int c0 = 0; c0 < d; c0 += kCols)
    for (int64_t n = 0; n < N; ++n) {
      float* row = dwte + int64_t{tokens[n]} * d;
      for (int c = c0; c < std::min(d, c0 + kCols); ++c) row[c] += dout[n * d + c];
    }
}

}  // namespace mlkv
