// CUDA launchers behind parallel/tp_ops.h (tp_ops.cu); streams passed as void* to keep this
// header free of CUDA types. Only declared for builds with MLKV_HAVE_CUDA.
#pragma once
#include <cstdint>

namespace mlkv::parallel::cuda_tp {

void add_residual_biases(void* y, const void* x, const void* b1, const void* b2, int64_t N, int C, void* stream);
void ce_local_max(float* row_max, const void* logits, int64_t N, int64_t Vl, void* stream);
void ce_local_sums(float* sums, const void* logits, const float* row_max, const int32_t* targets, int64_t N,
                   int64_t Vl, int64_t v0, void* stream);
void ce_finish(float* losses, void* logits, const float* row_max, const float* sums, const int32_t* targets,
               int64_t N, int64_t Vl, int64_t v0, float dloss, bool compute_grad, void* stream);

}  // namespace mlkv::parallel::cuda_tp
