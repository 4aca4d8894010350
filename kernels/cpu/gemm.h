// gemm_nn: C[M, N] (=, or += when accumulate) A[M, K] · B[K, N], all row-major fp32, with
// leading dimensions lda/ldb/ldc. The one dense kernel of the CPU backend: every linear layer's
// forward and backward is expressed through it (with transposed copies where needed).
// Deterministic for any thread count: threads split C into tiles, and each element sums its
// k terms in the same order every time.
#pragma once
#include <cstdint>

namespace mlkv::cpu {

void gemm_nn(float* C, const float* A, const float* B, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
             int64_t ldc, bool accumulate);

// out[cols, rows] = in[rows, cols]ᵀ
void transpose(float* out, const float* in, int64_t rows, int64_t cols);

}  // namespace mlkv::cpu
