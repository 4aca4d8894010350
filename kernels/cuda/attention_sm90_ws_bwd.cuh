// What the two warp-specialised backward kernels share (attention_sm90_ws_backward.cu: hd 64 and
// 128, 128 keys a block; attention_sm90_ws_backward_wide.cu: hd 256, 64 keys a block): the
// padding of D, lse₂ and the fp32 dQ, the register split, the step order, and the launch of the
// wide kernel. Included only from those two files.
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/attention_sm90.h"

namespace mlkv::cuda::attn {

constexpr int kWsPad = 128;   // D, lse₂ and the fp32 dQ have T rounded up to this (every query tile size)
constexpr int kWsBrMin = 64;  // the smallest query tile: the turn counters are sized for it

constexpr int kBwdProducerRegs = 24;
constexpr int kBwdConsumerRegs = 240;  // (24 + 2·240)·128 = 64,512 of 65,536

// A float2 from shared memory at this point of the program (asm volatile: not hoisted).
__device__ __forceinline__ float2 lds_f2(uint32_t addr) {
  float2 v;
  asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];\n" : "=f"(v.x), "=f"(v.y) : "r"(addr));
  return v;
}

// The (head, query tile) of step t of a block whose slice has `heads` heads from h0 and sees
// query tiles q_first .. q_first + per_head - 1. By default the last query tile comes first and
// the heads of a query tile follow one another: then every key tile reaches (query tile, head) at
// the same step index, so key tile jt, waiting for jt - 1's dQ of that query tile, waits about
// one step's latency in all. Head-major with ascending query tiles (the order before 2026-12-03,
// kept as a measurement switch, MLKV_ATTN_BWD_ORDER=1) makes jt wait h + 1 steps at head h.
struct Step {
  int h, qi;
};
__device__ __forceinline__ Step step_of(int t, int h0, int heads, int q_first, int per_head, bool head_major) {
  if (head_major) return {h0 + t / per_head, q_first + t % per_head};
  return {h0 + t % heads, q_first + per_head - 1 - t / heads};
}
bool ws_bwd_head_major();  // MLKV_ATTN_BWD_ORDER=1, read per call

// hd 256 (attention_sm90_ws_backward_wide.cu): the main kernel only; the caller has run the
// pre-pass (D, lse₂), zeroed ws_wide_turns() turn counters, and casts dQ afterwards.
constexpr int kWideKeyTile = 64;
inline size_t ws_wide_turns(int B, int T, int H) { return size_t(B) * H * ((T + kWsBrMin - 1) / kWsBrMin) * 2; }
void launch_bwd_ws_wide(float* dk, float* dv, const void* dout, const void* q, const void* k, const void* v, int B,
                        int T, int H, int KVH, const DkdvSplit& split, const WsBwdScratch& ws, cudaStream_t stream);

}  // namespace mlkv::cuda::attn
