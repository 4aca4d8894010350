// MLKV flash-attention backward, warp-specialised (FlashAttention-3's Hopper structure, sm_90a),
// for hd 64 and 128, and hd 80 on the hd-128 kernel with zero-filled columns (hd 256:
// attention_sm90_ws_backward_wide.cu, launched from here): one kernel computes dQ, dK and dV with
// 5 tile products per (query tile, key tile) pair instead of the two-kernel scheme's 7
// (attention_sm90_backward.cu). Same contract as
// attention_backward (attention.h): dq assigned, dk/dv fp32 accumulated, bitwise deterministic.
//
// One block = one producer warpgroup + two consumer warpgroups, per (key tile of 128 keys, b, KV
// head, head slice); its steps are the (query tile, query head) pairs of its slice, query tiles
// of BR rows (128 at hd 64, 64 at hd 128) at or below the diagonal, in step_of's order (the last
// query tile first, heads inner). K and V stay in shared memory. At hd 64 without a head split a
// block may take several KV heads one after another (bwd_kv_per_block; ATTENTION_NOTES log 17),
// their K/V in a two-slot ring and each one's dK/dV stored after its last step.
//   producer warp 0 (one thread): TMA loads of K, V, then per step of Q, dO (128-byte swizzle)
//     and of that tile's lse·log2e and D into an NS-stage ring (mbarriers).
//   producer warp 1 (one thread), the dQ writer: per step, once the consumers have put the fp32
//     dQ partial in shared memory, waits for this query tile's turn (below) and adds it into the
//     fp32 dQ accumulator with a TMA reduce-add (the first key tile stores instead).
//   consumers (64 keys each), per step:
//     Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ     wgmma, all operands from shared memory (K-major)
//     Pᵀ = exp2(Sᵀ·c − lse₂), dSᵀ = Pᵀ∘(dPᵀ − D)   registers, packed to bf16 A fragments
//     dV += Pᵀ·dO, dK += dSᵀ·Q    wgmma, A from registers, dO and Q read MN-major
//     dSᵀ → shared memory; then
//     dQ = dS·K                   wgmma, dS read MN-major from dSᵀ, shared by the consumers one
//                                 of four ways (DqMode; the defaults: split by query rows at hd
//                                 64, by columns at hd 128, both after a named barrier)
//   then dK, dV are added into dk, dv once, as in the two-kernel scheme (head split included).
// Determinism of dQ: the partials of a query tile come from the key tiles at or before it (with
// own_keys two per key tile, consumer 0's first) and are added in key-tile order. A counter per
// (b, h, query tile) in global memory holds the number of key tiles already added; key tile jt's
// writer waits until it reads jt, adds, waits for the add to land, and stores jt + 1. Blocks are
// numbered with the key tile slowest (dkdv_block), so every block waits only on blocks numbered
// before it: no deadlock, and by the time key tile jt runs, tile jt-1 is mostly done.
// A pre-pass writes D = rowsum(dO∘O) and lse·log2e with T padded to 128 rows (lse₂ = +inf past T,
// so those rows' P is 0); a post-pass turns the fp32 dQ into bf16 dq.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include "core/env.h"
#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/attention_sm90.cuh"
#include "kernels/cuda/attention_sm90.h"
#include "kernels/cuda/attention_sm90_ws_bwd.cuh"
#include "kernels/cuda/attention_tma.cuh"

namespace mlkv::cuda::attn {
namespace {

constexpr int kWsBc = 128;  // keys a block (two consumers × 64)

// How the two consumers share a step's dQ = dS·K (64 queries × hd, over 128 keys).
enum class DqMode {
  own_keys,   // each over its own 64 keys, all hd columns: two partials, no wait for the other
  half_cols,  // each over all 128 keys, its hd/2 columns: both dSᵀ halves first (named barrier)
  half_rows,  // 128 queries a step: each over all 128 keys, its 64 query rows (named barrier)
  alternate,  // one consumer a step, all of it, taking turns (named barrier)
};

// BR query rows a step (64 or 128: one or two 64-query, 128-byte swizzle regions of dSᵀ). KVS
// K/V slots: 1 for blocks of one KV head; 2 for blocks of several (hd 64 only: no room at hd 128),
// so that the next item's K and V load while this item's steps run.
template <int HD, int BR, int NS, DqMode DQ, int KVS>
struct WsBwdTile {
  static constexpr int kBc = kWsBc, kBr = BR, kChunks = HD / 64, kKVS = KVS;
  // dSᵀ buffers: two (step t writes t % 2 while the other consumer may still read t - 1's), or,
  // to make room for the second K/V slot, one that a step writes once both consumers' dQ
  // products of the step before have read it (a named barrier). One buffer costs 5 % at MQA
  // (16,12,1,2048: 0.754 against 0.72 ms), which is why blocks of one item keep two.
  static constexpr int kDsBufs = kKVS > 1 ? 1 : 2;
  static constexpr int kDqN = DQ == DqMode::half_cols ? HD / 2 : HD;  // dQ columns a consumer computes
  static constexpr int kDqKeys = DQ == DqMode::own_keys ? 64 : kBc;  // keys it sums over
  static constexpr uint32_t kKVBytes = kBc * HD * 2;       // K or V
  static constexpr uint32_t kQBytes = kBr * HD * 2;        // Q or dO, one stage
  static constexpr uint32_t kDSBytes = kBc * kBr * 2;      // dSᵀ, one buffer
  static constexpr uint32_t kDQBytes = kBr * HD * 4;       // fp32 dQ partial, one buffer
  static constexpr uint32_t kVecBytes = kBr * 4;           // lse₂ or D, one stage
  // dQ buffers: one per consumer (own_keys: each its partial; alternate: each its turns), or
  // one both write halves of (half_cols).
  static constexpr bool kShared = DQ == DqMode::half_cols || DQ == DqMode::half_rows;  // one buffer, both write
  static constexpr int kNdq = kShared ? 1 : 2;
  static constexpr int kDqWarps = kShared ? 8 : 4;  // warps writing one buffer
  static constexpr size_t kSmem = 1024 + 2 * size_t(kKVS) * kKVBytes + 2 * size_t(NS) * kQBytes + kDsBufs * kDSBytes +
                                  size_t(kNdq) * kDQBytes + 2 * size_t(NS) * kVecBytes;
  static_assert(HD == 64 || HD == 128, "hd 256 has its own kernel; hd 80 runs on the hd-128 one");
  static_assert(KVS == 1 || KVS == 2, "one item's K/V, or a two-slot ring");
  static_assert(kSmem + 256 <= 227 * 1024, "shared memory per block, the static barriers included");
  static_assert(kDqN == 64, "the dQ product reads one 64-column region of K (a 64 × 64 accumulator)");
  static_assert(DQ != DqMode::half_cols || HD == 128, "half columns = one 64-column region each");
  static_assert((DQ == DqMode::half_rows) == (BR == 128), "128 query rows are split by rows, 64 are not");
  static_assert(BR % 64 == 0 && kWsPad % BR == 0, "query tiles of whole swizzle regions that tile the padding");
};

// HDR: the tensors' head dim; HD (a multiple of 64) the kernel's, the columns past HDR zero
// (TMA fills them) and never stored: hd 80 runs on the hd-128 kernel. The dK, dV accumulators and
// products are acc_cols(HDR) wide (80 measured as fast as 128 and holds 48 fewer registers;
// ATTENTION_NOTES log 18).
template <int HD, int BR, int NS, DqMode DQ, int KVS, int HDR>
__global__ void __launch_bounds__(384, 1)
    attention_bwd_ws_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                            const __grid_constant__ CUtensorMap tm_v, const __grid_constant__ CUtensorMap tm_do,
                            const __grid_constant__ CUtensorMap tm_dq, const __grid_constant__ CUtensorMap tm_lse2,
                            const __grid_constant__ CUtensorMap tm_dvec, int* __restrict__ dq_turn,
                            float* __restrict__ dk,
                            float* __restrict__ dv, int B, int T, int t_pad, int H, int group, DkdvSplit split,
                            int kv_per, float scale_log2, float scale, bool head_major) {
#ifdef MLKV_SM90A
  using Tile = WsBwdTile<HD, BR, NS, DQ, KVS>;
  constexpr int kBc = Tile::kBc, kBr = Tile::kBr, kChunks = Tile::kChunks, kNdq = Tile::kNdq, kKVS = Tile::kKVS;
  extern __shared__ unsigned char smem_raw[];
  __shared__ __align__(8) uint64_t bar_kv[kKVS], bar_kv_empty[kKVS], bar_full[NS], bar_empty[NS], bar_dq_full[kNdq],
      bar_dq_empty[kNdq];
  unsigned char* base = smem_align1024(smem_raw);
  bf16* sK = reinterpret_cast<bf16*>(base);           // [kKVS][kChunks][kBc × 64]
  bf16* sV = sK + kKVS * kBc * HD;                    // [kKVS][kChunks][kBc × 64]
  bf16* sQ = sV + kKVS * kBc * HD;                    // [NS][kChunks][kBr × 64]
  bf16* sdO = sQ + NS * kBr * HD;                     // [NS][kChunks][kBr × 64]
  bf16* sdS = sdO + NS * kBr * HD;                    // [kDsBufs][kBc × kBr]  dSᵀ, keys × queries
  float* sDQ = reinterpret_cast<float*>(sdS + Tile::kDsBufs * kBc * kBr);  // [kNdq][HD / 32][kBr × 32]
  float* sL = sDQ + kNdq * kBr * HD;                  // [NS][kBr]  lse₂
  float* sD = sL + NS * kBr;                          // [NS][kBr]  D

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
  const int KVH = H / group;
  const BwdBlockWork w = bwd_block_work<kBc, kBr>(split, B, T, H, group, kv_per);
  const int jt = w.jt, b = w.b, kv0 = w.kv0, n_q = w.n_q, n_steps = w.n_steps;

  if (tid == 0) {
#pragma unroll
    for (int i = 0; i < kKVS; ++i) {
      mbar_init(&bar_kv[i], 1);
      mbar_init(&bar_kv_empty[i], 8);  // one arrival per consumer warp, after an item's last step
    }
#pragma unroll
    for (int s = 0; s < NS; ++s) {
      mbar_init(&bar_full[s], 1);
      mbar_init(&bar_empty[s], 8);  // one arrival per consumer warp
    }
#pragma unroll
    for (int i = 0; i < kNdq; ++i) {
      mbar_init(&bar_dq_full[i], Tile::kDqWarps);
      mbar_init(&bar_dq_empty[i], 1);
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (wg == 0) {
    regs_dealloc<kBwdProducerRegs>();
    if (tid == 0) {  // loads
      ws_bwd_load<HD, kBc, kBr, NS, kKVS>(w, &tm_q, &tm_k, &tm_v, &tm_do, &tm_lse2, &tm_dvec, sK, sV, kBc * HD, sQ,
                                          sdO, kChunks * kBr * 64, sL, sD, bar_kv, bar_kv_empty, bar_full,
                                          bar_empty, H, KVH, split.heads_per, t_pad, head_major);
    } else if (tid == 32) {  // the dQ writer
      // Buffers written at step t: both (own_keys, added in consumer order), buffer t % 2
      // (alternate), the one (half_cols).
      constexpr int kPerStep = DQ == DqMode::own_keys ? 2 : 1;
      for (int t = 0; t < n_steps; ++t) {
        const Step st = item_step<kKVS>(w, t, split.heads_per, head_major).st;
        int* turn = dq_turn + (int64_t(b) * H + st.h) * n_q + st.qi;
        const int row = (b * H + st.h) * t_pad + st.qi * kBr;
        for (int i = 0; i < kPerStep; ++i) {
          const int nb = DQ == DqMode::alternate ? t % 2 : i;
          const int use = DQ == DqMode::alternate ? t / 2 : t;  // this buffer's uses before
          const float* src = sDQ + nb * kBr * HD;
          mbar_wait(&bar_dq_full[nb], use & 1);
          if (i == 0) dq_turn_wait(turn, jt);
#pragma unroll
          for (int r = 0; r < ws_dq_cols(HDR) / 32; ++r) {  // all-padding columns are not added
            if (jt == 0 && i == 0)
              tma_store_2d(&tm_dq, r * 32, row, src + r * kBr * 32);
            else
              tma_reduce_add_2d(&tm_dq, r * 32, row, src + r * kBr * 32);
          }
          bulk_commit();
          if (i + 1 < kPerStep) {
            bulk_wait<0>();  // landed before the next partial is added to the same rows
            mbar_arrive(&bar_dq_empty[nb]);
          } else {
            bulk_wait_read<0>();
            mbar_arrive(&bar_dq_empty[nb]);  // the consumers may overwrite this buffer
            bulk_wait<0>();
          }
        }
        dq_turn_pass(turn, jt + 1);
      }
    }
    return;
  }

  regs_alloc<kBwdConsumerRegs>();
  const int cw = wg - 1, wq = warp & 3;
  const int wg_key0 = kv0 + cw * 64;
  const int key_r = wg_key0 + wq * 16 + (lane >> 2);  // this thread's keys: key_r, key_r + 8
  constexpr int NACC = acc_cols(HDR);
  static_assert(NACC <= HD, "dK, dV columns within the kernel's");
  float dva[NACC / 2], dka[NACC / 2];
#pragma unroll
  for (int i = 0; i < NACC / 2; ++i) dva[i] = dka[i] = 0.f;
  // Products that start a fresh accumulator (scale-d 0) still take it as an asm input; zeroing it
  // just before the issue keeps the previous step's values from being live across the loop.
  float s_t[kBr / 2], dpt[kBr / 2], dqa[Tile::kDqN / 2];
  uint32_t pa[kBr / 16][4], dsa[kBr / 16][4];  // Pᵀ, dSᵀ as A fragments (16 queries each)

  // dK, dV of an item: slice 0 adds into the caller's sums (or assigns them); slice s > 0 writes
  // partial s-1.
  const auto store_dkdv = [&](int item) {
    const DkdvOut dst(dk, dv, split, w.slice, int64_t(B) * KVH * T * HDR);
    add_dkdv_acc<NACC, HDR, HDR>(dst, (int64_t(b) * KVH + w.g0 + item) * T * HDR, key_r, T, lane, dka, dva, scale);
  };
  for (int t = 0; t < n_steps; ++t) {
    const int s = t % NS;
    const ItemStep is = item_step<kKVS>(w, t, split.heads_per, head_major);
    const int t_item = t - is.item * w.steps_item, slot = is.item % kKVS;
    const uint32_t k_addr = smem_addr(sK + slot * kBc * HD), v_addr = smem_addr(sV + slot * kBc * HD);
    if (t_item == 0) mbar_wait(&bar_kv[slot], (is.item / kKVS) & 1);
    const int qr0 = is.st.qi * kBr;
    const int ds_buf = Tile::kDsBufs == 2 ? (t & 1) : 0;
    const uint32_t q_addr = smem_addr(sQ + s * kChunks * kBr * 64);
    const uint32_t do_addr = smem_addr(sdO + s * kChunks * kBr * 64);
    mbar_wait(&bar_full[s], (t / NS) & 1);

    // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (this consumer's 64 keys × kBr queries), a commit group each
    // (two loops, not one helper: folding them into a lambda changed this kernel's SASS); the
    // k-steps over columns past HDR would add zeros and are skipped.
#pragma unroll
    for (int i = 0; i < kBr / 2; ++i) s_t[i] = dpt[i] = 0.f;
    fence_regs(s_t);
    fence_regs(dpt);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < NACC / 16; ++ks) {
      const uint32_t in = (ks / 4) * kBc * 128 + cw * 64 * 128 + (ks % 4) * 32;
      const uint32_t inq = (ks / 4) * kBr * 128 + (ks % 4) * 32;
      WgmmaSS<kBr>::run(s_t, desc_sw128(k_addr + in, 16, 1024), desc_sw128(q_addr + inq, 16, 1024), ks > 0);
    }
    wgmma_commit();
#pragma unroll
    for (int ks = 0; ks < NACC / 16; ++ks) {
      const uint32_t in = (ks / 4) * kBc * 128 + cw * 64 * 128 + (ks % 4) * 32;
      const uint32_t inq = (ks / 4) * kBr * 128 + (ks % 4) * 32;
      WgmmaSS<kBr>::run(dpt, desc_sw128(v_addr + in, 16, 1024), desc_sw128(do_addr + inq, 16, 1024), ks > 0);
    }
    wgmma_commit();

    // Pᵀ: causal mask where some query of the tile precedes some key of this consumer.
    const bool need_mask = qr0 < wg_key0 + 63;
    // lse₂ and D of this thread's columns 8·nt + 2·(lane % 4) + {0, 1}, read where used (lds_f2:
    // the compiler would otherwise load all of them up front, 2·BR/4 registers).
    const uint32_t col_addr = smem_addr(sL + s * kBr + (lane & 3) * 2);
    const uint32_t d_delta = uint32_t(NS * kBr * 4);  // sD is NS stages past sL
    wgmma_wait<1>();
    fence_regs(s_t);
#pragma unroll
    for (int nt = 0; nt < kBr / 8; ++nt) {
      const float2 l2 = lds_f2(col_addr + nt * 32);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qc = nt * 8 + (lane & 3) * 2 + (e & 1);
        float p = fast_exp2(fmaf(s_t[4 * nt + e], scale_log2, -((e & 1) ? l2.y : l2.x)));
        if (need_mask && qr0 + qc < key_r + (e >> 1) * 8) p = 0.f;
        s_t[4 * nt + e] = p;
      }
    }
    wgmma_wait<0>();
    fence_regs(dpt);
    // dSᵀ, and both packed as bf16 A fragments 16 queries at a time (so that the fp32 values die
    // as their packed copies appear).
#pragma unroll
    for (int kk = 0; kk < kBr / 16; ++kk)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int e0 = 8 * kk + 2 * i;  // columns 8·(e0 / 4) + 2·(lane % 4) + {0, 1}
        const float2 d2 = lds_f2(col_addr + d_delta + (e0 / 4) * 32);
        const float ds0 = s_t[e0] * (dpt[e0] - d2.x), ds1 = s_t[e0 + 1] * (dpt[e0 + 1] - d2.y);
        pa[kk][i] = pack_bf16(s_t[e0], s_t[e0 + 1]);
        dsa[kk][i] = pack_bf16(ds0, ds1);
      }

    // dV += Pᵀ·dO, dK += dSᵀ·Q (16 queries a k-step).
    fence_regs(dva);
    fence_regs(dka);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBr / 16; ++kk)
      WgmmaRS<NACC>::run(dva, pa[kk], desc_sw128(do_addr + kk * 2048, kBr * 128, 1024), 1);
#pragma unroll
    for (int kk = 0; kk < kBr / 16; ++kk)
      WgmmaRS<NACC>::run(dka, dsa[kk], desc_sw128(q_addr + kk * 2048, kBr * 128, 1024), 1);
    wgmma_commit();

    // dSᵀ → buffer ds_buf in the 128-byte-swizzle layout (row = key, 64 queries = 128 bytes a
    // region, BR / 64 regions; the 16-byte chunk c of row r sits at chunk c ^ (r % 8), and
    // r % 8 = lane / 4 here).
    {
      uint32_t row_off = (cw * 64 + wq * 16 + (lane >> 2)) * 128 + (lane & 3) * 4, sw = lane >> 2;
      // Opaque to the optimiser, so that the 16 store offsets are not hoisted out of the step loop
      // into 16 live registers (at hd 128 that spills).
      asm volatile("" : "+r"(row_off), "+r"(sw));
      // One buffer: both consumers' dQ products of step t - 1 have read it (own_keys: each reads
      // only its own rows, and has waited for its product).
      if (Tile::kDsBufs == 1 && DQ != DqMode::own_keys && t > 0) named_sync(4, 256);
      unsigned char* buf = reinterpret_cast<unsigned char*>(sdS + ds_buf * kBc * kBr) + row_off;
#pragma unroll
      for (int hr = 0; hr < 2; ++hr)
#pragma unroll
        for (int nt = 0; nt < kBr / 8; ++nt)
          *reinterpret_cast<uint32_t*>(buf + (nt / 8) * kBc * 128 + hr * 1024 + (((nt % 8) ^ sw) << 4)) =
              dsa[nt / 2][(nt & 1) * 2 + hr];
    }
    fence_proxy_async();
    if (DQ == DqMode::own_keys)
      named_sync(2 + cw, 128);  // this consumer's dSᵀ rows are written
    else
      named_sync(1, 256);  // both halves of dSᵀ are written
    // dV, dK done before dQ is issued: the P/dS fragments then die before the dQ accumulator is
    // live (at hd 128 all three together spill), and the stage can be handed back earlier.
    wgmma_wait<0>();
    fence_regs(dva);
    fence_regs(dka);
    fence_regs_u32(pa);
    fence_regs_u32(dsa);
    __syncwarp();
    if (lane == 0) mbar_arrive(&bar_empty[s]);  // Q, dO, lse₂, D of this stage are read

    const bool my_dq = DQ != DqMode::alternate || (t & 1) == cw;
    if (my_dq) {
      const uint32_t ds_addr = smem_addr(sdS + ds_buf * kBc * kBr);
      // own_keys: this consumer's 64 rows of dSᵀ and K; half_cols: its 64-column region of K;
      // half_rows: its 64-query region of dSᵀ.
      const uint32_t a_addr = ds_addr + (DQ == DqMode::own_keys    ? cw * 64 * 128
                                         : DQ == DqMode::half_rows ? cw * kBc * 128
                                                                   : 0);
      const uint32_t kn_addr = k_addr + (DQ == DqMode::own_keys    ? cw * 64 * 128
                                         : DQ == DqMode::half_cols ? cw * kBc * 128
                                                                   : 0);
#pragma unroll
      for (int i = 0; i < Tile::kDqN / 2; ++i) dqa[i] = 0.f;
      fence_regs(dqa);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < Tile::kDqKeys / 16; ++kk)
        WgmmaSS<64, 1, 1>::run(dqa, desc_sw128(a_addr + kk * 2048, kBc * 128, 1024),
                               desc_sw128(kn_addr + kk * 2048, kBc * 128, 1024), kk > 0);
      wgmma_commit();
    }
    if (my_dq) {
      wgmma_wait<0>();
      fence_regs(dqa);
      // fp32 dQ partial → sDQ, 128-byte swizzle per 32-column region (the TMA box layout).
      // The buffer is free once the writer has read what its previous use put there.
      const int nb = Tile::kShared ? 0 : cw;
      const int use = DQ == DqMode::alternate ? t / 2 : t;
      if (use > 0) mbar_wait(&bar_dq_empty[nb], (use - 1) & 1);
      // Columns col0 (64·consumer for half_cols, else 0) + 8·nt + 2·(lane % 4) + {0, 1}: region
      // (32 columns) col0/32 + nt/4, chunk 2·(nt % 4) + (lane % 4)/2, swizzled by row % 8 =
      // lane / 4, offset 8·(lane % 2) inside it.
      const int row0 = DQ == DqMode::half_rows ? cw * 64 : 0;
      uint32_t row_off = (row0 + wq * 16 + (lane >> 2)) * 128 + (lane & 1) * 8, sw = ((lane & 3) >> 1) ^ (lane >> 2);
      asm volatile("" : "+r"(row_off), "+r"(sw));  // as for dSᵀ: no hoisted offsets
      unsigned char* buf = reinterpret_cast<unsigned char*>(sDQ + nb * kBr * HD) + row_off +
                           (DQ == DqMode::half_cols ? cw * 2 : 0) * kBr * 128;
#pragma unroll
      for (int hr = 0; hr < 2; ++hr)
#pragma unroll
        for (int nt = 0; nt < Tile::kDqN / 8; ++nt)
          *reinterpret_cast<float2*>(buf + (nt / 4) * kBr * 128 + hr * 1024 + (((2 * (nt % 4)) ^ sw) << 4)) =
              make_float2(dqa[4 * nt + 2 * hr], dqa[4 * nt + 2 * hr + 1]);
      fence_proxy_async();
      __syncwarp();
      if (lane == 0) mbar_arrive(&bar_dq_full[nb]);
    }
    // The item's last step (several items a block): its K, V are read (all products waited).
    if (kKVS > 1 && t_item == w.steps_item - 1) {
      __syncwarp();
      if (lane == 0) mbar_arrive(&bar_kv_empty[slot]);
      store_dkdv(is.item);
#pragma unroll
      for (int i = 0; i < NACC / 2; ++i) dva[i] = dka[i] = 0.f;
    }
  }
  if (kKVS == 1) store_dkdv(0);  // one item a block (hd 128: inside the loop, the epilogue spills)
#endif
}

// Pre-pass: for every (b, h) and padded row t < t_pad, D = rowsum(dO∘O) and lse₂ = lse·log2e
// (0 and +inf past T). HD/8 lanes a row, 8 elements each, in a power-of-two group (hd 80: 10 of
// 16) for the shuffle sum.
__host__ __device__ constexpr int prepass_lanes(int hd) { return hd <= 64 ? 8 : hd <= 128 ? 16 : 32; }
template <int HD>
__global__ void ws_bwd_prepass_kernel(float* __restrict__ dvec, float* __restrict__ lse2,
                                      const bf16* __restrict__ dout, const bf16* __restrict__ out,
                                      const float* __restrict__ lse, int T, int H, int t_pad, int64_t n_rows) {
  constexpr int kLanes = prepass_lanes(HD);
  static_assert(HD % 8 == 0 && HD <= 256, "8-element pieces, at most 32 a row");
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t r = i / kLanes;
  const int c = int(i % kLanes);
  const bool live = r < n_rows;
  const int64_t bh = live ? r / t_pad : 0;
  const int t = live ? int(r % t_pad) : 0;
  float acc = 0.f;
  if (live && t < T && c < HD / 8) {
    const int64_t off = ((bh / H) * T + t) * int64_t(H) * HD + (bh % H) * HD + c * 8;
    const uint4 x = *reinterpret_cast<const uint4*>(dout + off);
    const uint4 y = *reinterpret_cast<const uint4*>(out + off);
    const __nv_bfloat162* x2 = reinterpret_cast<const __nv_bfloat162*>(&x);
    const __nv_bfloat162* y2 = reinterpret_cast<const __nv_bfloat162*>(&y);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 xf = __bfloat1622float2(x2[e]), yf = __bfloat1622float2(y2[e]);
      acc = fmaf(xf.x, yf.x, fmaf(xf.y, yf.y, acc));
    }
  }
#pragma unroll
  for (int o = kLanes / 2; o > 0; o /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (live && c == 0) {
    dvec[r] = acc;
    lse2[r] = t < T ? lse[bh * T + t] * kLog2e : INFINITY;
  }
}

// Post-pass: dq[B, H, T, hd] bf16 = scale · the fp32 accumulator [B·H, t_pad, acc4·4] (rows < T;
// acc4·4 = ws_dq_cols(hd)).
__global__ void ws_bwd_dq_cast_kernel(bf16* __restrict__ dq, const float4* __restrict__ acc, int T, int t_pad,
                                      int hd4, int acc4, int64_t n4, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n4; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / hd4;  // row of dq: (b·H + h)·T + t
    const int64_t bh = row / T;
    const int t = int(row % T);
    const float4 a = acc[(bh * t_pad + t) * acc4 + i % hd4];
    uint2 o;
    o.x = pack_bf16(a.x * scale, a.y * scale);
    o.y = pack_bf16(a.z * scale, a.w * scale);
    reinterpret_cast<uint2*>(dq)[i] = o;
  }
}

// Measurement switch, read per call: at hd 64, MLKV_ATTN_BWD_DQ=1 takes 64-query steps with each
// consumer summing dQ over its own keys, =2 64-query steps with the two taking turns, instead of
// 128-query steps split by rows.
int bwd_dq_mode() {
  const long m = env_int("MLKV_ATTN_BWD_DQ", 0);
  return m == 1 || m == 2 ? int(m) : 0;
}

}  // namespace

bool ws_bwd_head_major() { return env_int("MLKV_ATTN_BWD_ORDER", 0) == 1; }

// A block's steps stay at most kMaxBlockSteps (longer blocks leave the last wave's SMs idle: at
// 16,12,12,2048 four items of 8.5 steps measured 0.827 ms against three's 0.810), and at least
// kBlocksPerSm blocks an SM remain.
constexpr double kMaxBlockSteps = 32;
constexpr int kBlocksPerSm = 4;

int bwd_kv_per_block(int B, int T, int KVH, int key_tile, int q_tile, const DkdvSplit& split) {
  if (split.split != 1) return 1;
  if (const int forced = forced_divisor("MLKV_ATTN_BWD_KV_PER", KVH)) return forced;
  const int n_kt = (T + key_tile - 1) / key_tile, n_q = (T + q_tile - 1) / q_tile;
  int64_t q_tiles = 0;  // query tiles at or after each key tile's first, summed over key tiles
  for (int jt = 0; jt < n_kt; ++jt) q_tiles += n_q - int64_t(jt) * key_tile / q_tile;
  const double item_steps = double(q_tiles) * split.heads_per / n_kt;
  const int64_t blocks = int64_t(B) * KVH * n_kt;
  for (int kv : {4, 3, 2})
    if (KVH % kv == 0 && kv * item_steps <= kMaxBlockSteps && blocks / kv >= int64_t(kBlocksPerSm) * sm_count())
      return kv;
  return 1;
}

namespace {

// kv_per KV heads a block (1 unless KVS is 2); HDR: attention_bwd_ws_kernel's.
template <int HD, int BR, int NS, DqMode DQ, int KVS = 1, int HDR = HD>
void launch_bwd_ws(float* dk, float* dv, const void* dout, const void* q, const void* k, const void* v, int B, int T,
                   int H, int KVH, const DkdvSplit& split, const WsBwdScratch& ws, cudaStream_t stream,
                   int kv_per = 1) {
  using Tile = WsBwdTile<HD, BR, NS, DQ, KVS>;
  static_assert(HDR <= HD && HD - HDR < 64, "padding within the last 64-column region");
  if (kv_per < 1 || KVH % kv_per != 0 || (KVS == 1 && kv_per != 1))  // one slot: the kernel takes one item
    throw Error("attention_backward: " + std::to_string(kv_per) + " KV heads a block with " + std::to_string(KVS) +
                " K/V slot(s) and " + std::to_string(KVH) + " KV heads");
  const int t_pad = ws_t_pad(T);
  const int64_t rows = int64_t(B) * H * t_pad;
  const float scale = 1.f / std::sqrt(float(HDR));
  const CUtensorMap tm_q = make_tmap_bf16_3d(q, HDR, T, uint64_t(B) * H, BR);
  const CUtensorMap tm_k = make_tmap_bf16_3d(k, HDR, T, uint64_t(B) * KVH, kWsBc);
  const CUtensorMap tm_v = make_tmap_bf16_3d(v, HDR, T, uint64_t(B) * KVH, kWsBc);
  const CUtensorMap tm_do = make_tmap_bf16_heads(dout, HDR, H, T, B, BR);
  const CUtensorMap tm_dq = make_tmap_f32_2d(ws.dq_acc, ws_dq_cols(HDR), uint64_t(rows), BR);
  const CUtensorMap tm_lse2 = make_tmap_f32_1d(ws.lse2, uint64_t(rows), BR);
  const CUtensorMap tm_dvec = make_tmap_f32_1d(ws.dvec, uint64_t(rows), BR);
  auto kernel = attention_bwd_ws_kernel<HD, BR, NS, DQ, KVS, HDR>;
  allow_smem(kernel, Tile::kSmem);
  const int64_t blocks = int64_t((T + kWsBc - 1) / kWsBc) * (KVH / kv_per) * B * split.split;
  const DkdvSplit sp = ws_bwd_sectioned(split, B, T, H, KVH, HDR, kv_per);
  kernel<<<dim3(unsigned(blocks)), 384, Tile::kSmem, stream>>>(tm_q, tm_k, tm_v, tm_do, tm_dq, tm_lse2, tm_dvec,
                                                               ws.dq_turn, dk, dv, B, T, t_pad, H, H / KVH, sp,
                                                               kv_per, scale * kLog2e, scale, ws_bwd_head_major());
  check_launch("attention_bwd_ws_kernel");
}

// Turn counters: one per (b, h, 64-query tile).
size_t ws_turns(int B, int T, int H) { return size_t(B) * H * ((T + kWsBrMin - 1) / kWsBrMin); }

}  // namespace

// hd 80 on the hd-128 kernel only where K/V are shared: for MHA the two-kernel backward measured
// faster (H100, 2026-12-07, fwd + bwd ms, warp-specialised against lockstep + two-kernel:
// 4,32,4,2048,80 1.081 against 1.394; 4,32,32,2048,80 1.549 against 1.427; ATTENTION_NOTES log 18).
// Re-measured 2026-12-08 after logs 19-22 (H100): still slower for MHA, 4,32,32,2048,80 backward
// 1.182 against 1.086-1.091 ms (ATTENTION_NOTES log 23).
bool ws_backward_takes(int hd, int group) { return hd == 64 || hd == 128 || hd == 256 || (hd == 80 && group >= 2); }

int backward_ws_key_tile(int hd) { return hd == 256 ? kWideKeyTile : kWsBc; }

size_t ws_backward_scratch_floats(int B, int T, int H, int hd) {
  const size_t rows = size_t(B) * H * ws_t_pad(T);
  // D, lse₂, the fp32 dQ, the turn counters (ints, as floats' worth of space); each piece a
  // multiple of 64 floats so the next stays 256-byte aligned.
  auto round = [](size_t n) { return (n + 63) / 64 * 64; };
  return round(rows) * 2 + round(rows * ws_dq_cols(hd)) + round(ws_turns(B, T, H));
}

WsBwdScratch ws_backward_scratch(float* base, int B, int T, int H, int hd) {
  const size_t rows = size_t(B) * H * ws_t_pad(T);
  auto round = [](size_t n) { return (n + 63) / 64 * 64; };
  WsBwdScratch ws;
  ws.dvec = base;
  ws.lse2 = ws.dvec + round(rows);
  ws.dq_acc = ws.lse2 + round(rows);
  ws.dq_turn = reinterpret_cast<int*>(ws.dq_acc + round(rows * ws_dq_cols(hd)));
  return ws;
}

// Pre-pass (turn counters zeroed, D and lse₂), the main kernel for hd, then dQ cast to bf16.
void backward_sm90_ws(void* dq, float* dk, float* dv, const void* dout, const void* q, const void* k, const void* v,
                      const void* out, const float* lse, int B, int T, int H, int KVH, int hd,
                      const DkdvSplit& split, const WsBwdScratch& ws, cudaStream_t stream) {
  const int t_pad = ws_t_pad(T);
  const int64_t rows = int64_t(B) * H * t_pad;
  if (rows > INT32_MAX) throw Error("attention_backward: too many rows for the warp-specialised backward");
  check_cuda(cudaMemsetAsync(ws.dq_turn, 0, ws_turns(B, T, H) * sizeof(int), stream), "cudaMemsetAsync(dq turns)");
  const auto prepass = [&](auto kernel) {
    const int64_t threads = rows * prepass_lanes(hd);
    kernel<<<unsigned((threads + 255) / 256), 256, 0, stream>>>(ws.dvec, ws.lse2, static_cast<const bf16*>(dout),
                                                                static_cast<const bf16*>(out), lse, T, H, t_pad, rows);
    check_launch("ws_bwd_prepass_kernel");
  };
  switch (hd) {
    // Shared memory: K, V slots + NS stages of Q, dO, lse₂, D + dSᵀ buffers + the fp32 dQ
    // partial buffers = 195 KB (hd 64, 128-query steps, several KV heads a block: 2 K/V slots,
    // 2 stages, 1 dSᵀ, 1 dQ), 194 KB (the same, one KV head: 1, 2, 2, 1), 145 KB (hd 64,
    // 64-query steps: 1, 3, 2, 2) and 194 KB (hd 128: 1, 2, 2, 1).
    case 64:
      prepass(ws_bwd_prepass_kernel<64>);
      // 64-query steps: alternate measured 16-20 % faster than own_keys, whose writer waits for
      // one partial's add to land before the next (ATTENTION_NOTES log 13).
      switch (bwd_dq_mode()) {
        case 1:
          launch_bwd_ws<64, 64, 3, DqMode::own_keys>(dk, dv, dout, q, k, v, B, T, H, KVH, split, ws, stream);
          break;
        case 2:
          launch_bwd_ws<64, 64, 3, DqMode::alternate>(dk, dv, dout, q, k, v, B, T, H, KVH, split, ws, stream);
          break;
        default:
          if (const int kv_per = bwd_kv_per_block(B, T, KVH, kWsBc, 128, split); kv_per > 1)
            launch_bwd_ws<64, 128, 2, DqMode::half_rows, 2>(dk, dv, dout, q, k, v, B, T, H, KVH, split, ws, stream,
                                                            kv_per);
          else
            launch_bwd_ws<64, 128, 2, DqMode::half_rows>(dk, dv, dout, q, k, v, B, T, H, KVH, split, ws, stream);
      }
      break;
    case 80:  // the hd-128 kernel, columns 80-127 zero-filled by the TMA loads (ATTENTION_NOTES log 18)
      prepass(ws_bwd_prepass_kernel<80>);
      launch_bwd_ws<128, 64, 2, DqMode::half_cols, 1, 80>(dk, dv, dout, q, k, v, B, T, H, KVH, split, ws, stream);
      break;
    case 128:  // own_keys and alternate would need a 64 × 128 dQ accumulator besides dK, dV
      prepass(ws_bwd_prepass_kernel<128>);
      launch_bwd_ws<128, 64, 2, DqMode::half_cols>(dk, dv, dout, q, k, v, B, T, H, KVH, split, ws, stream);
      break;
    case 256:
      prepass(ws_bwd_prepass_kernel<256>);
      launch_bwd_ws_wide(dk, dv, dout, q, k, v, B, T, H, KVH, split, ws, stream);
      break;
    default: throw Error("attention: the warp-specialised backward has no head dim " + std::to_string(hd));
  }
  const int64_t n4 = int64_t(B) * H * T * hd / 4;
  const int cast_blocks = int(std::min<int64_t>((n4 + 255) / 256, 8 * int64_t(sm_count())));
  ws_bwd_dq_cast_kernel<<<cast_blocks, 256, 0, stream>>>(static_cast<bf16*>(dq),
                                                         reinterpret_cast<const float4*>(ws.dq_acc), T, t_pad, hd / 4,
                                                         ws_dq_cols(hd) / 4, n4, 1.f / std::sqrt(float(hd)));
  check_launch("ws_bwd_dq_cast_kernel");
}

}  // namespace mlkv::cuda::attn
