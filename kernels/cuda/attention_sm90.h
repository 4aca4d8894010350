// Internal interface between the attention entry points (attention_forward.cu,
// attention_backward.cu) and the Hopper wgmma kernels (attention_sm90_*.cu). Host-only types.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>

namespace mlkv::cuda::attn {

// True when the current device is compute capability 9.0, the sm_90a kernels were compiled into
// this binary (CMAKE_CUDA_ARCHITECTURES containing 90a), and attention_use_sm90(false) was not
// called. Checked once per device with a tiny probe kernel (do not first call it under graph capture).
bool sm90_enabled();

// Whether the warp-specialised backward (attention_sm90_ws_backward.cu) takes hd with `group`
// query heads a KV head: hd 64, 128, 256; hd 80 (on the hd-128 kernel) when K/V are shared
// (group ≥ 2), where it measured faster than the two-kernel backward on 80 real columns, which
// MHA keeps (ATTENTION_NOTES log 18).
bool ws_backward_takes(int hd, int group);
bool ws_pingpong();  // false after MLKV_ATTN_PINGPONG=0 (a measurement switch)
// Whether the warp-specialised forward at hd gives K and V barriers of their own: above hd 64,
// or as MLKV_ATTN_FWD_SPLIT_KV=0|1 forces (read per call).
bool ws_forward_split_kv(int hd);
void forward_sm90_ws(void* out, float* lse, const void* q, const void* k, const void* v, int B, int T, int H,
                     int KVH, int hd, cudaStream_t stream);
void forward_sm90(void* out, float* lse, const void* q, const void* k, const void* v, int B, int T, int H, int KVH,
                  int hd, cudaStream_t stream);
// dq kernel (also writes D = rowsum(dO∘O) into dvec[B, H, T]).
void backward_dq_sm90(void* dq, float* dvec, const void* dout, const void* q, const void* k, const void* v,
                      const void* out, const float* lse, int B, int T, int H, int KVH, int hd, cudaStream_t stream);
// dK/dV kernel; hd ≤ 128 only (hd = 256 keeps the mma.sync kernel: its two fp32 accumulators would
// need 256 registers per thread).
// split: the head split (attention_launch.cuh), chosen for backward_dkdv_sm90_key_tile(hd).
struct DkdvSplit;
bool backward_dkdv_sm90_supports(int hd);
int backward_dkdv_sm90_key_tile(int hd);
void backward_dkdv_sm90(float* dk, float* dv, const void* dout, const void* q, const void* k, const void* v,
                        const float* lse, const float* dvec, int B, int T, int H, int KVH, int hd,
                        const DkdvSplit& split, cudaStream_t stream);


// The warp-specialised backward (attention_sm90_ws_backward.cu, and _wide.cu for hd 256): dQ, dK,
// dV in one kernel for hd 64, 128 and 256, with key tiles of backward_ws_key_tile(hd) keys (the
// head split is chosen for that).
// Its scratch, carved from ws_backward_scratch_floats() floats of 256-byte-aligned workspace:
struct WsBwdScratch {
  float* dvec = nullptr;    // D = rowsum(dO∘O), [B·H, T padded to 128]
  float* lse2 = nullptr;    // lse·log2e, same layout (+inf past T)
  float* dq_acc = nullptr;  // fp32 dQ, [B·H, T padded, hd]
  int* dq_turn = nullptr;   // per (b, h, 64-query tile): key tiles added so far
};
int backward_ws_key_tile(int hd);
size_t ws_backward_scratch_floats(int B, int T, int H, int hd);
WsBwdScratch ws_backward_scratch(float* base, int B, int T, int H, int hd);
void backward_sm90_ws(void* dq, float* dk, float* dv, const void* dout, const void* q, const void* k, const void* v,
                      const void* out, const float* lse, int B, int T, int H, int KVH, int hd,
                      const DkdvSplit& split, const WsBwdScratch& ws, cudaStream_t stream);
// sm90 on, ws_backward_takes(hd, group), not turned off by attention_use_ws_backward
bool ws_backward_enabled(int hd, int group);

}  // namespace mlkv::cuda::attn
