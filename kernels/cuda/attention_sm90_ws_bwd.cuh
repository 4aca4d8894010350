// What the two warp-specialised backward kernels share (attention_sm90_ws_backward.cu: hd 64 and
// 128, 128 keys a block; attention_sm90_ws_backward_wide.cu: hd 256, 64 keys a block): the
// padding of D, lse₂ and the fp32 dQ, the register split, the step order, the load thread, the dQ
// turn protocol, and the launch of the wide kernel. Included only from those two files.
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/attention_sm90.h"
#include "kernels/cuda/attention_tma.cuh"

namespace mlkv::cuda::attn {

constexpr int kWsPad = 128;   // D, lse₂ and the fp32 dQ have T rounded up to this (every query tile size)
constexpr int kWsBrMin = 64;  // the smallest query tile: the turn counters are sized for it
inline int ws_t_pad(int T) { return (T + kWsPad - 1) / kWsPad * kWsPad; }

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

// The turn protocol of the dQ writers (one thread each): key tile jt's adds into a query tile's
// fp32 dQ start once the tile's counter reads jt (the acquire orders them after the adds of key
// tiles before it) and, once they have landed (bulk_wait), the counter moves on to jt + 1.
__device__ __forceinline__ void dq_turn_wait(const int* turn, int jt) {
  while (ld_acquire(turn) != jt) {
  }
  fence_proxy_async_global();
}
__device__ __forceinline__ void dq_turn_pass(int* turn, int next) {
  fence_proxy_async_global();
  st_release(turn, next);
}

// What a block of BC keys with query tiles of BR rows works on: (key tile jt, b, KV head g, head
// slice from h0), and its steps.
struct BwdBlockWork {
  int jt, b, g, slice, h0, kv0, n_q, q_first, per_head, n_steps;
};
template <int BC, int BR>
__device__ __forceinline__ BwdBlockWork bwd_block_work(const DkdvSplit& split, int B, int T, int H, int group) {
  const DkdvBlock blk = dkdv_block(split, B, H / group);
  BwdBlockWork w;
  w.jt = blk.jt;
  w.b = blk.b;
  w.g = blk.g;
  w.slice = blk.slice;
  w.h0 = blk.g * group + blk.slice * split.heads_per;
  w.kv0 = blk.jt * BC;
  w.n_q = (T + BR - 1) / BR;
  w.q_first = w.kv0 / BR;
  w.per_head = w.n_q - w.q_first;
  w.n_steps = split.heads_per * w.per_head;
  return w;
}

// The load thread of both kernels: K and V of the block once (128-byte-swizzled 64-column
// regions, onto bar_kv), then per step into stage t % NS, once the stage is empty: Q and dO
// (region c of stage s at q_stage + s·stage_elems + c·BR·64, the same from do_stage) and this
// query tile's lse₂ and D, all onto bar_full[s].
template <int HD, int BC, int BR, int NS>
__device__ __forceinline__ void ws_bwd_load(const BwdBlockWork& w, const CUtensorMap* tm_q, const CUtensorMap* tm_k,
                                            const CUtensorMap* tm_v, const CUtensorMap* tm_do,
                                            const CUtensorMap* tm_lse2, const CUtensorMap* tm_dvec, bf16* sK,
                                            bf16* sV, bf16* q_stage, bf16* do_stage, int stage_elems, float* sL,
                                            float* sD, uint64_t* bar_kv, uint64_t* bar_full, uint64_t* bar_empty,
                                            int H, int KVH, int heads, int t_pad, bool head_major) {
  constexpr int kChunks = HD / 64;
  tma_prefetch_map(tm_q);
  tma_prefetch_map(tm_do);
  tma_prefetch_map(tm_lse2);
  tma_prefetch_map(tm_dvec);
  const int kv_row = w.b * KVH + w.g;
  mbar_arrive_expect_tx(bar_kv, 2u * BC * HD * 2);
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    tma_load_3d(sK + c * BC * 64, tm_k, c * 64, w.kv0, kv_row, bar_kv);
    tma_load_3d(sV + c * BC * 64, tm_v, c * 64, w.kv0, kv_row, bar_kv);
  }
  for (int t = 0; t < w.n_steps; ++t) {
    const int s = t % NS;
    if (t >= NS) mbar_wait(&bar_empty[s], (t / NS - 1) & 1);
    const Step st = step_of(t, w.h0, heads, w.q_first, w.per_head, head_major);
    const int qr0 = st.qi * BR;
    mbar_arrive_expect_tx(&bar_full[s], 2u * BR * HD * 2 + 2u * BR * 4);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      tma_load_3d(q_stage + s * stage_elems + c * BR * 64, tm_q, c * 64, qr0, w.b * H + st.h, &bar_full[s]);
      tma_load_3d(do_stage + s * stage_elems + c * BR * 64, tm_do, st.h * HD + c * 64, qr0, w.b, &bar_full[s]);
    }
    const int vec0 = (w.b * H + st.h) * t_pad + qr0;
    tma_load_1d(sL + s * BR, tm_lse2, vec0, &bar_full[s]);
    tma_load_1d(sD + s * BR, tm_dvec, vec0, &bar_full[s]);
  }
}

// hd 256 (attention_sm90_ws_backward_wide.cu): the main kernel only; the caller has run the
// pre-pass (D, lse₂), zeroed the turn counters, and casts dQ afterwards.
constexpr int kWideKeyTile = 64;
void launch_bwd_ws_wide(float* dk, float* dv, const void* dout, const void* q, const void* k, const void* v, int B,
                        int T, int H, int KVH, const DkdvSplit& split, const WsBwdScratch& ws, cudaStream_t stream);

}  // namespace mlkv::cuda::attn
