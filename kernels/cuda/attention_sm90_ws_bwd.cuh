// What the two warp-specialised backward kernels share (attention_sm90_ws_backward.cu: hd 64 and
// 128, 128 keys a block; attention_sm90_ws_backward_wide.cu: hd 256, 64 keys a block): the
// padding of D, lse₂ and the fp32 dQ, the register split, the step order, the load thread, the dQ
// turn protocol, and the launch of the wide kernel. Included only from those two files.
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/env.h"
#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/attention_sm90.h"
#include "kernels/cuda/attention_tma.cuh"

namespace mlkv::cuda::attn {

constexpr int kWsPad = 128;   // D, lse₂ and the fp32 dQ have T rounded up to this (every query tile size)
// Columns of the fp32 dQ accumulator for head dim hd: whole 32-column TMA boxes (hd 80: 96).
__host__ __device__ constexpr int ws_dq_cols(int hd) { return (hd + 31) / 32 * 32; }
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

// What a block of BC keys with query tiles of BR rows works on: key tile jt of batch b, for
// kv_items KV heads g0 .. g0 + kv_items - 1 one after another (an item each: its K, V, dK, dV),
// each with the query heads of head slice `slice`; and its steps, steps_item an item, item-major.
// Several items a block keep MHA blocks (one query head a KV head) from being so short that their
// start and end dominate (ATTENTION_NOTES log 17).
struct BwdBlockWork {
  int jt, b, g0, slice, kv_items, h0, group, kv0, n_q, q_first, per_head, steps_item, n_steps;
};
template <int BC, int BR>
__device__ __forceinline__ BwdBlockWork bwd_block_work(const DkdvSplit& split, int B, int T, int H, int group,
                                                       int kv_per) {
  const DkdvBlock blk = dkdv_block(split, B, H / group / kv_per);
  BwdBlockWork w;
  w.jt = blk.jt;
  w.b = blk.b;
  w.g0 = blk.g * kv_per;
  w.slice = blk.slice;
  w.kv_items = kv_per;
  w.group = group;
  w.h0 = w.g0 * group + blk.slice * split.heads_per;
  w.kv0 = blk.jt * BC;
  w.n_q = (T + BR - 1) / BR;
  w.q_first = w.kv0 / BR;
  w.per_head = w.n_q - w.q_first;
  w.steps_item = split.heads_per * w.per_head;
  w.n_steps = kv_per * w.steps_item;
  return w;
}

// Step t of a block: its item and (head, query tile); within an item, step_of's order. KVS 1 (a
// block of one item) skips the division by steps_item (at hd 128 it costs a spilled register).
struct ItemStep {
  int item;
  Step st;
};
template <int KVS>
__device__ __forceinline__ ItemStep item_step(const BwdBlockWork& w, int t, int heads, bool head_major) {
  if constexpr (KVS == 1) return {0, step_of(t, w.h0, heads, w.q_first, w.per_head, head_major)};
  const int item = t / w.steps_item;
  return {item, step_of(t - item * w.steps_item, w.h0 + item * w.group, heads, w.q_first, w.per_head, head_major)};
}

// The load thread of both kernels (tm_do from make_tmap_bf16_heads; HD is the kernel's width, a
// multiple of 64, the columns past the tensors' own zero-filled): K and V of each item into slot
// item % KVS of a KVS-slot ring (KVS 1 only for blocks of one item; bar_kv_empty is then never
// used and may be null) (128-byte-swizzled 64-column regions at sK/sV + slot·kv_slot_elems, onto bar_kv[slot]; a slot is
// refilled once the consumers' 8 warps have arrived on bar_kv_empty[slot] after the item before
// it), then per step into stage t % NS, once the stage is empty: Q and dO (region c of stage s at
// q_stage + s·stage_elems + c·BR·64, the same from do_stage) and this query tile's lse₂ and D, all
// onto bar_full[s]. An item's K/V load is issued before its first step's loads at the latest, and
// as early as its slot is known to be free without waiting: once a stage the consumers released
// belongs to an item after the slot's previous one.
template <int HD, int BC, int BR, int NS, int KVS>
__device__ __forceinline__ void ws_bwd_load(const BwdBlockWork& w, const CUtensorMap* tm_q, const CUtensorMap* tm_k,
                                            const CUtensorMap* tm_v, const CUtensorMap* tm_do,
                                            const CUtensorMap* tm_lse2, const CUtensorMap* tm_dvec, bf16* sK,
                                            bf16* sV, int kv_slot_elems, bf16* q_stage, bf16* do_stage,
                                            int stage_elems, float* sL, float* sD, uint64_t* bar_kv,
                                            uint64_t* bar_kv_empty, uint64_t* bar_full, uint64_t* bar_empty, int H,
                                            int KVH, int heads, int t_pad, bool head_major) {
  constexpr int kChunks = HD / 64;
  tma_prefetch_map(tm_q);
  tma_prefetch_map(tm_do);
  tma_prefetch_map(tm_lse2);
  tma_prefetch_map(tm_dvec);
  const auto load_kv = [&](int item) {
    const int slot = item % KVS;
    if (item >= KVS) mbar_wait(&bar_kv_empty[slot], (item / KVS - 1) & 1);
    const int kv_row = w.b * KVH + w.g0 + item;
    mbar_arrive_expect_tx(&bar_kv[slot], 2u * BC * HD * 2);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      tma_load_3d(sK + slot * kv_slot_elems + c * BC * 64, tm_k, c * 64, w.kv0, kv_row, &bar_kv[slot]);
      tma_load_3d(sV + slot * kv_slot_elems + c * BC * 64, tm_v, c * 64, w.kv0, kv_row, &bar_kv[slot]);
    }
  };
  // One slot holds the one item of a block (kv_items 1): its K/V load first, no more state (the
  // load thread has 24 registers).
  if (KVS == 1) load_kv(0);
  int next_kv = KVS == 1 ? 1 : 0;  // the next item whose K/V load is not issued
  for (int t = 0; t < w.n_steps; ++t) {
    const int s = t % NS;
    if (t >= NS) mbar_wait(&bar_empty[s], (t / NS - 1) & 1);
    const ItemStep is = item_step<KVS>(w, t, heads, head_major);
    if (KVS > 1) {
      // Items the consumers have finished (kv_empty arrived): all before the item of step t - NS,
      // whose stage they have released.
      const int done = t >= NS ? (t - NS) / w.steps_item : 0;
      while (next_kv < w.kv_items && (next_kv <= is.item || (next_kv < is.item + KVS && next_kv - KVS < done))) {
        load_kv(next_kv);
        ++next_kv;
      }
    }
    const int qr0 = is.st.qi * BR;
    mbar_arrive_expect_tx(&bar_full[s], 2u * BR * HD * 2 + 2u * BR * 4);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      tma_load_3d(q_stage + s * stage_elems + c * BR * 64, tm_q, c * 64, qr0, w.b * H + is.st.h, &bar_full[s]);
      tma_load_4d(do_stage + s * stage_elems + c * BR * 64, tm_do, c * 64, is.st.h, qr0, w.b, &bar_full[s]);
    }
    const int vec0 = (w.b * H + is.st.h) * t_pad + qr0;
    tma_load_1d(sL + s * BR, tm_lse2, vec0, &bar_full[s]);
    tma_load_1d(sD + s * BR, tm_dvec, vec0, &bar_full[s]);
  }
}

// KV heads a block works through (BwdBlockWork::kv_items) for key tiles of key_tile and query
// tiles of q_tile: 1 with a head split; else the largest of 4, 3, 2 dividing KVH that keeps a
// block's steps within kMaxBlockSteps and leaves kBlocksPerSm blocks an SM, else 1.
// MLKV_ATTN_BWD_KV_PER=n (a divisor of KVH) forces it, for measurements.
int bwd_kv_per_block(int B, int T, int KVH, int key_tile, int q_tile, const DkdvSplit& split);

// `split` with its L2 sections (l2_sections) where sections pay, for blocks of kv_per KV heads: a
// (b, KV heads) pair's blocks re-read its query heads' Q and dO (bf16) and fp32 dQ, and read its
// K and V once. A section runs all key tiles of its pairs together, so a
// pair's later key tiles first wait for the dQ turns of the earlier ones (up to n_jt turns), where
// the one-section order starts them a wave apart. That costs more than L2 saves in the 128-key
// kernels (hd 64: 0.92 → 1.15 ms at 16,12,12,2048; MQA 0.81 → 1.04) and wins at hd 256, whose
// 64-key steps move twice the bytes a FLOP, while the one-section order runs fewer than 16 key
// tiles of a pair at once (MHA 2.40 → 1.51 ms, 8,8,2 1.54 → 1.32; MQA with 16, 1.50 → 1.54:
// H100, ATTENTION_NOTES log 19). The budget is 3/4 of L2, not the forward's half: at hd 256, 36
// to 48 MiB measured 1.38-1.40 ms for MHA against 1.52 at 16 to 32 (sections of 6 pairs against
// 4 or fewer), 8,8,2 1.28 against 1.31-1.33 (2 pairs against 1; log 22). MLKV_ATTN_L2_MIB forces
// sections in every kernel.
inline DkdvSplit ws_bwd_sectioned(DkdvSplit split, int B, int T, int H, int KVH, int hd, int kv_per) {
  const int64_t pairs = int64_t(B) * (KVH / kv_per);
  const bool pays = hd == 256 && sm_count() < 16 * pairs * split.split;
  if (!pays && env_int("MLKV_ATTN_L2_MIB", -1) < 0) return split;
  const int64_t row_bytes = int64_t(H / KVH) * (4 * hd + 4 * ws_dq_cols(hd)) + 4 * hd;
  split.section = l2_sections(int64_t(kv_per) * T * row_bytes, pairs, 0.75);
  return split;
}

// hd 256 (attention_sm90_ws_backward_wide.cu): the main kernel only; the caller has run the
// pre-pass (D, lse₂), zeroed the turn counters, and casts dQ afterwards.
constexpr int kWideKeyTile = 64;
void launch_bwd_ws_wide(float* dk, float* dv, const void* dout, const void* q, const void* k, const void* v, int B,
                        int T, int H, int KVH, const DkdvSplit& split, const WsBwdScratch& ws, cudaStream_t stream);

}  // namespace mlkv::cuda::attn
