// The few ops tensor parallelism needs beyond core/backend.h, for both devices (CPU here,
// CUDA in tp_ops.cu), dispatched on the backend's device. Conventions as in core/backend.h:
// outputs first, act = compute dtype, float = fp32, device pointers of `be`.
#pragma once
#include <cstdint>

#include "core/backend.h"

namespace mlkv::parallel {

// y[N, C] += x[N, C] + b1[C] + b2[C]: after a layer's one all-reduce, the RowParallelLinear
// biases (attention dense, MLP down) and the residual, in one pass. Adding the biases after the
// reduction keeps them (and their gradients) identical on every tensor-parallel rank.
void add_residual_biases(Backend& be, void* y, const void* x, const void* b1, const void* b2, int64_t N, int C);

// Vocab-parallel softmax cross-entropy (Megatron): each rank holds logits[N, Vl] for the vocabulary
// rows [v0, v0 + Vl); targets are global ids (< 0 = ignored). Three passes around two all-reduces:
//   ce_local_max:  row_max[N] = max_j logits[n, j]                      → all-reduce max
//   ce_local_sums: sums[0:N] = Σ_j exp(logits − row_max), sums[N:2N] = logits[n, t − v0] or 0
//                                                                        → all-reduce sum
//   ce_finish:     losses[n] = log(sums[n]) + row_max[n] − sums[N + n]  (0 where ignored); with
//                  compute_grad, logits ← dloss·(softmax − onehot) in place, as Backend::cross_entropy.
void ce_local_max(Backend& be, float* row_max, const void* logits, int64_t N, int64_t Vl);
void ce_local_sums(Backend& be, float* sums, const void* logits, const float* row_max, const int32_t* targets,
                   int64_t N, int64_t Vl, int64_t v0);
void ce_finish(Backend& be, float* losses, void* logits, const float* row_max, const float* sums,
               const int32_t* targets, int64_t N, int64_t Vl, int64_t v0, float dloss, bool compute_grad);

}  // namespace mlkv::parallel
