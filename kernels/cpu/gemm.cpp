// Blocked fp32 GEMM for the CPU backend (see gemm.h). A 4×16 register tile accumulates over a
// 256-deep slice of K while a 256×16 panel of B stays in L1; GCC vector extensions give 8-wide
// lanes (AVX2+FMA where the CPU has it, via target_clones; two SSE halves otherwise).
#include "kernels/cpu/gemm.h"

#include <algorithm>
#include <cstring>

namespace mlkv::cpu {

namespace {

typedef float v8 __attribute__((vector_size(32)));

inline v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof(v)); }

constexpr int64_t kMr = 4, kNr = 16, kKc = 256, kMc = 64;

// C[0:4, 0:16] += A[0:4, 0:kc] · B[0:kc, 0:16]
// (-Wpsabi is about passing vectors by value across ISAs; micro_4x16 only takes pointers.)
__attribute__((target_clones("avx2,default"))) void micro_4x16(float* C, const float* A, const float* B,
                                                                 int64_t kc, int64_t lda, int64_t ldb, int64_t ldc) {
  v8 c00 = load8(C), c01 = load8(C + 8);
  v8 c10 = load8(C + ldc), c11 = load8(C + ldc + 8);
  v8 c20 = load8(C + 2 * ldc), c21 = load8(C + 2 * ldc + 8);
  v8 c30 = load8(C + 3 * ldc), c31 = load8(C + 3 * ldc + 8);
  for (int64_t k = 0; k < kc; ++k) {
    const v8 b0 = load8(B + k * ldb), b1 = load8(B + k * ldb + 8);
    const float a0 = A[k], a1 = A[lda + k], a2 = A[2 * lda + k], a3 = A[3 * lda + k];
    c00 += a0 * b0; c01 += a0 * b1;
    c10 += a1 * b0; c11 += a1 * b1;
    c20 += a2 * b0; c21 += a2 * b1;
    c30 += a3 * b0; c31 += a3 * b1;
  }
  store8(C, c00); store8(C + 8, c01);
  store8(C + ldc, c10); store8(C + ldc + 8, c11);
  store8(C + 2 * ldc, c20); store8(C + 2 * ldc + 8, c21);
  store8(C + 3 * ldc, c30); store8(C + 3 * ldc + 8, c31);
}

// Edge tiles (rows < 4 or columns < 16): plain loops, same k order.
void micro_edge(float* C, const float* A, const float* B, int64_t mr, int64_t nr, int64_t kc, int64_t lda,
                int64_t ldb, int64_t ldc) {
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < nr; ++j) {
      float s = C[i * ldc + j];
      for (int64_t k = 0; k < kc; ++k) s += A[i * lda + k] * B[k * ldb + j];
      C[i * ldc + j] = s;
    }
}

}  // namespace

void gemm_nn(float* C, const float* A, const float* B, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
             int64_t ldc, bool accumulate) {
  const int64_t m_blocks = (M + kMc - 1) / kMc, n_blocks = (N + 63) / 64;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t mb = 0; mb < m_blocks; ++mb)
    for (int64_t nb = 0; nb < n_blocks; ++nb) {
      const int64_t m0 = mb * kMc, m1 = std::min(M, m0 + kMc);
      const int64_t n0 = nb * 64, n1 = std::min(N, n0 + 64);
      if (!accumulate)
        for (int64_t i = m0; i < m1; ++i) std::fill(C + i * ldc + n0, C + i * ldc + n1, 0.0f);
      for (int64_t k0 = 0; k0 < K; k0 += kKc) {
        const int64_t kc = std::min(kKc, K - k0);
        for (int64_t j = n0; j < n1; j += kNr)
          for (int64_t i = m0; i < m1; i += kMr) {
            const int64_t mr = std::min(kMr, m1 - i), nr = std::min(kNr, n1 - j);
            float* c = C + i * ldc + j;
            const float* a = A + i * lda + k0;
            const float* b = B + k0 * ldb + j;
            if (mr == kMr && nr == kNr) micro_4x16(c, a, b, kc, lda, ldb, ldc);
            else micro_edge(c, a, b, mr, nr, kc, lda, ldb, ldc);
          }
      }
    }
}

void transpose(float* out, const float* in, int64_t rows, int64_t cols) {
  constexpr int64_t kT = 32;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t r0 = 0; r0 < rows; r0 += kT)
    for (int64_t c0 = 0; c0 < cols; c0 += kT)
      for (int64_t r = r0; r < std::min(rows, r0 + kT); ++r)
        for (int64_t c = c0; c < std::min(cols, c0 + kT); ++c) out[c * rows + r] = in[r * cols + c];
}

}  // namespace mlkv::cpu
