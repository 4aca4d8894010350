// CPU (fp32) bodies of the tensor-parallel ops, and the dispatch to CUDA (tp_ops.cu).
#include "parallel/tp_ops.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"
#ifdef MLKV_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#include "parallel/tp_ops_cuda.h"
#define MLKV_TP_CUDA(call)                                                       \
  if (be.device() == Device::cuda) {                                             \
    cuda_tp::call;                                                               \
    return;                                                                      \
  }
#else
#define MLKV_TP_CUDA(call)                                                                       \
  if (be.device() == Device::cuda) throw Error("tensor-parallel op on CUDA in a build without CUDA");
#endif

namespace mlkv::parallel {

#ifdef MLKV_HAVE_CUDA
#define STREAM cuda_backend_stream(be)
#endif

void add_residual_biases(Backend& be, void* y_, const void* x_, const void* b1_, const void* b2_, int64_t N, int C) {
  MLKV_TP_CUDA(add_residual_biases(y_, x_, b1_, b2_, N, C, STREAM));
  float* y = static_cast<float*>(y_);
  const float *x = static_cast<const float*>(x_), *b1 = static_cast<const float*>(b1_),
              *b2 = static_cast<const float*>(b2_);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) y[n * C + c] += b1[c] + b2[c] + x[n * C + c];
}

void ce_local_max(Backend& be, float* row_max, const void* logits_, int64_t N, int64_t Vl) {
  MLKV_TP_CUDA(ce_local_max(row_max, logits_, N, Vl, STREAM));
  const float* logits = static_cast<const float*>(logits_);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) row_max[n] = *std::max_element(logits + n * Vl, logits + (n + 1) * Vl);
}

void ce_local_sums(Backend& be, float* sums, const void* logits_, const float* row_max, const int32_t* targets,
                   int64_t N, int64_t Vl, int64_t v0) {
  MLKV_TP_CUDA(ce_local_sums(sums, logits_, row_max, targets, N, Vl, v0, STREAM));
  const float* logits = static_cast<const float*>(logits_);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* row = logits + n * Vl;
    double s = 0;
    for (int64_t j = 0; j < Vl; ++j) s += std::exp(static_cast<double>(row[j] - row_max[n]));
    sums[n] = static_cast<float>(s);
    const int64_t t = targets[n] - v0;
    sums[N + n] = (targets[n] >= 0 && t >= 0 && t < Vl) ? row[t] : 0.0f;
  }
}

void ce_finish(Backend& be, float* losses, void* logits_, const float* row_max, const float* sums,
               const int32_t* targets, int64_t N, int64_t Vl, int64_t v0, float dloss, bool compute_grad) {
  MLKV_TP_CUDA(ce_finish(losses, logits_, row_max, sums, targets, N, Vl, v0, dloss, compute_grad, STREAM));
  float* logits = static_cast<float*>(logits_);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* row = logits + n * Vl;
    if (targets[n] < 0) {  // ignored position: no loss, no gradient
      losses[n] = 0.0f;
      if (compute_grad) std::fill(row, row + Vl, 0.0f);
      continue;
    }
    const double log_denom = std::log(static_cast<double>(sums[n]));
    losses[n] = static_cast<float>(log_denom + row_max[n] - sums[N + n]);
    if (compute_grad) {
      for (int64_t j = 0; j < Vl; ++j)
        row[j] = dloss * static_cast<float>(std::exp(static_cast<double>(row[j] - row_max[n]) - log_denom));
      const int64_t t = targets[n] - v0;
      if (t >= 0 && t < Vl) row[t] -= dloss;
    }
  }
}

}  // namespace mlkv::parallel
