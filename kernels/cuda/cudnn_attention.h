// cuDNN's fused SDPA behind the contract of kernels/cuda/attention.h (issue 6 item 3): the
// comparison point for our MLKV kernels, chosen with train.attention = "cudnn". Built only when
// CMake finds cuDNN (then MLKV_HAVE_CUDNN is defined); callers guard with #ifdef MLKV_HAVE_CUDNN.
//
// The graphs go through the cuDNN backend (graph) API, as the operation graph cuDNN's fused
// flash-attention engines recognise: Q·Kᵀ, scale, causal mask (row ≥ col), softmax with stats,
// P·V; and the matching backward (ATTENTION_NOTES.md, "cuDNN SDPA backend"). One finalized plan
// per (device, B, T, H, KVH, hd, direction) is cached; one cudnnHandle per device is set to the
// caller's stream on every call.
//
// Differences from our kernels, by construction:
//   * dK/dV: cuDNN writes each layer's dK, dV in bf16 (its GQA head-group sum included); they are
//     added into the fp32 group sums afterwards. So every layer's contribution is rounded to bf16
//     once before the fp32 sum, where our kernels add unrounded fp32 values (a relative error of
//     ~2⁻⁹ per layer term, not growing with the number of layers sharing the K/V).
//   * dq is accumulated by cuDNN with float atomics: not bitwise deterministic run to run.
#pragma once
#include <cstddef>
#include <string>
#include <cuda_runtime_api.h>

namespace mlkv::cuda {

// What cuDNN's fused engines take here: hd a multiple of 8, at most 256; H % KVH == 0; T ≥ 1.
// An empty string when supported, otherwise why not.
const char* cudnn_attention_unsupported(int B, int T, int H, int KVH, int hd);

// out[B, T, H·hd] bf16 (heads merged); lse[B, H, T] fp32 = cuDNN's softmax stats (natural-log
// log-sum-exp of the scaled scores, the same quantity as our kernels' lse);
// q[B, H, T, hd], k/v[B, KVH, T, hd] bf16. Causal, scale 1/sqrt(hd); query head h reads KV
// head h / (H/KVH). Throws mlkv::Error naming the cuDNN status, the step and the shape.
void cudnn_attention_forward(void* out, float* lse, const void* q, const void* k, const void* v, int B, int T,
                             int H, int KVH, int hd, cudaStream_t stream);

// dq[B, H, T, hd] bf16 assigned; dk, dv[B, KVH, T, hd] fp32 added to (`accumulate`) or assigned,
// as in attention.h.
// dout[B, T, H·hd] bf16; out and lse from either forward (ours or cuDNN's: same quantities).
// Scratch (cuDNN's workspace, its fp32 dq accumulator and softmax-sum, the bf16 dK/dV) is one
// lazily grown buffer per device, reused by every call: calls on different streams of one device
// must not overlap in time. Growing it, and the first call of a shape (graph build, heuristics,
// plan finalize), cannot be captured in a CUDA graph.
void cudnn_attention_backward(void* dq, float* dk, float* dv, const void* dout, const void* q, const void* k,
                              const void* v, const void* out, const float* lse, int B, int T, int H, int KVH,
                              int hd, bool accumulate, cudaStream_t stream);

// Frees the workspaces, the cached plans and the handles (tests, shutdown).
void cudnn_attention_release();

// The cuDNN library loaded at run time, e.g. "9.14.0" (it may differ from the headers built with).
std::string cudnn_attention_library_version();

}  // namespace mlkv::cuda
