// Internal interface between the attention entry points (attention_forward.cu,
// attention_backward.cu) and the Hopper wgmma kernels (attention_sm90_*.cu). Host-only types.
#pragma once
#include <cuda_runtime_api.h>

namespace mlkv::cuda::attn {

// True when the current device is compute capability 9.0, the sm_90a kernels were compiled into
// this binary (CMAKE_CUDA_ARCHITECTURES containing 90a), and attention_use_sm90(false) was not
// called. Checked once per device with a tiny probe kernel (do not first call it under graph capture).
bool sm90_enabled();

// The warp-specialised forward (attention_sm90_ws_forward.cu) for hd 64, 128, 256; forward_sm90
// takes it unless attention_use_ws_forward(false) was called.
bool forward_ws_supports(int hd);
bool ws_pingpong();  // false after MLKV_ATTN_PINGPONG=0 (a measurement switch)
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

}  // namespace mlkv::cuda::attn
