// MLKV flash attention on CUDA: causal softmax(Q·K^T/sqrt(hd))·V with query heads grouped onto
// shared K/V heads (DESIGN §3b). bf16 in/out, fp32 accumulate, no T×T matrix in memory.
// Plain header: bf16 buffers are passed as void*, the only CUDA type is cudaStream_t.
#pragma once
#include <cstddef>
#include <cuda_runtime_api.h>

namespace mlkv::cuda {

// Head dims the kernels are instantiated for; anything else throws mlkv::Error.
bool attention_supports_head_dim(int hd);

// out[B, T, H·hd] bf16 (heads merged, ready for the dense projection); lse[B, H, T] fp32
// (natural-log log-sum-exp of the scaled scores, saved for the backward);
// q[B, H, T, hd], k/v[B, KVH, T, hd] bf16. Causal, scale 1/sqrt(hd); query head h reads KV head
// h / (H/KVH). hd ∈ {64, 80, 128, 256}; any T ≥ 1; H % KVH == 0.
void attention_forward(void* out, float* lse, const void* q, const void* k, const void* v, int B, int T, int H,
                       int KVH, int hd, cudaStream_t stream);

// dq[B, H, T, hd] bf16 assigned; dk, dv[B, KVH, T, hd] fp32: with `accumulate` the sums over
// all query heads that read each KV head are ADDED (+=), so that calls for the layers sharing the
// K/V sum into one buffer; without it they are assigned (the first layer of a group the backward
// reaches: no zeroing pass, and the kernels do not read the buffer).
// dout[B, T, H·hd] bf16; out and lse as from the forward. Bitwise deterministic: each K/V tile's
// sums are made by one thread block (or, with few KV heads, by a fixed set of blocks whose
// partials are added in a fixed order); dq either by one thread block per query tile (two-kernel
// backward) or, in the warp-specialised backward, as fp32 partials of the key-tile blocks added in
// key-tile order (a turn counter per query tile orders the adds).
//
// Scratch: the backward uses an internal, lazily grown, per-device workspace (D = rowsum(dO∘O)
// fp32 [B, H, T]; for the warp-specialised backward also lse·log2e and the fp32 dQ, [B·H, T
// rounded up to 128(, hd)], and a turn counter per 64-row query tile; with few KV heads the dK/dV
// partials of the head split, fp32 [split-1, 2, B, KVH, T, hd]); attention_backward_workspace_bytes
// says how much. The workspace is reused by
// every call, so calls on different streams of the same device must not overlap in time (the
// trainer runs attention on one stream). attention_release_workspace frees it (tests, shutdown).
// CUDA graphs: growing the workspace (cudaMalloc) and the first call on a device (a probe kernel
// plus a synchronous copy, see attention_use_sm90) cannot be captured; make one eager forward and
// backward call at the largest shape before capturing.
size_t attention_backward_workspace_bytes(int B, int T, int H, int KVH, int hd);
void attention_backward(void* dq, float* dk, float* dv, const void* dout, const void* q, const void* k,
                        const void* v, const void* out, const float* lse, int B, int T, int H, int KVH, int hd,
                        bool accumulate, cudaStream_t stream);
void attention_release_workspace();

// Kernel family: on an H100/H200 (compute capability 9.0) built with sm_90a code, the Hopper
// wgmma kernels run; elsewhere, or after attention_use_sm90(false), the mma.sync kernels (sm_80
// and up) do. Both compute the same function; the switch exists for tests and benchmarks.
void attention_use_sm90(bool enable);
bool attention_sm90_active();  // whether calls on the current device take the wgmma kernels
// Forward kernel within the sm90 family: the warp-specialised one (TMA producer, two consumer
// warpgroups, ping-pong; hd 80 on the hd-128 kernel with zero-filled columns) unless
// attention_use_ws_forward(false) selects the lockstep one (all warpgroups behind one block
// barrier a tile).
void attention_use_ws_forward(bool enable);
bool attention_ws_forward_active(int hd);
// The forward kernel that calls at head dim hd take on the current device, in words (benchmarks
// and test logs): "warp-specialised, ping-pong", "warp-specialised, no ping-pong" (each may end
// in ", K/V barriers apart"), "lockstep wgmma" or "mma.sync".
const char* attention_forward_kernel(int hd);
// Backward kernel within the sm90 family: the warp-specialised one (dQ, dK, dV in one kernel, 5
// products per tile pair, dQ added in a fixed key-tile order; hd 80 with group ≥ 2 on the hd-128
// kernel) unless attention_use_ws_backward(false) selects the two-kernel one (dq kernel + dK/dV
// kernel, 7 products), which hd 80 MHA runs. attention_backward_kernel names it.
void attention_use_ws_backward(bool enable);
bool attention_ws_backward_active(int hd, int group);
const char* attention_backward_kernel(int hd, int group);

}  // namespace mlkv::cuda
