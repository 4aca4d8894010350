// MLKV flash-attention backward, warp-specialised, for hd 256 (sm_90a): the main kernel of the
// hd-256 case of backward_sm90_ws (attention_sm90_ws_backward.cu runs the pre-pass before it and
// the dQ cast after it). 5 tile products per (query tile, key tile) pair, dk/dv fp32 accumulated,
// dQ added in key-tile order: bitwise deterministic.
//
// Why it differs from the hd 64/128 kernel: a consumer there holds dK and dV of its 64 keys, 2 ×
// 64 × hd fp32, which at hd 256 is 256 registers a thread. Here both consumers work on the same
// 64 keys and each owns 128 of the 256 columns of dK, dV and dQ (FlashAttention-3 splits hd 256
// the same way). Per step of 64 queries, consumer c:
//   Sᵀ, dPᵀ = K·Qᵀ, V·dOᵀ for its 32 queries   SS, N = 32, over all 256 columns
//   Pᵀ, dSᵀ (bf16) → shared memory, its 32-query half; named barrier (both halves written)
//   dV[:, c] += Pᵀ·dO[:, c], dK[:, c] += dSᵀ·Q[:, c]   SS, N = 128, over 64 queries
//   dQ[:, c] = dS·K[:, c]                        SS, dS read MN-major from dSᵀ, over 64 keys
//   dQ[:, c] (fp32) → shared memory, then added into the fp32 dQ with TMA (the first key tile stores)
// Shared memory holds K, V (64 KB), two stages of Q, dO (128 KB) and two buffers of Pᵀ, dSᵀ
// (32 KB): 226 KB of 227, no room for a separate fp32 dQ partial (64 KB) as in the hd 64/128
// kernel. So each consumer writes its dQ half into the part of the current stage that only it
// still reads: its two 64-column regions of Q and of dO (32 KB, the size of its partial), once its
// dV and dK are done (the other consumer's Sᵀ and dPᵀ, the only other readers, finished before
// the named barrier); its warps then arrive on the stage's dq_full barrier and go on.
// The dQ writer (producer warp 1, one thread) waits for both halves, for this query tile's turn,
// adds them into the fp32 dQ with TMA, hands the stage back to the loads once TMA has read it,
// and moves the turn on once the adds have landed: the consumers never wait on other blocks.
// Determinism: a turn counter per (b, h, query tile) counts the key tiles added so far; key tile
// jt's writer waits (ld.acquire) until it reads jt, adds, waits for the adds to land, and stores
// jt + 1 (st.release). Blocks are numbered with the key tile slowest (dkdv_block) and every key
// tile meets (query tile, head) at the same step index (step_of), so each block waits only on
// blocks numbered before it, about one step's latency. Measurements: ATTENTION_NOTES log 14
// (the consumers adding dQ themselves, with red.global or with TMA, measured slower).
#include <cmath>
#include <cstdint>

#include "kernels/cuda/attention_sm90.cuh"
#include "kernels/cuda/attention_sm90_ws_bwd.cuh"
#include "kernels/cuda/attention_tma.cuh"

namespace mlkv::cuda::attn {
namespace {

constexpr int kHd = 256, kBc = kWideKeyTile, kBr = 64, kChunks = kHd / 64, kNs = 2;
constexpr uint32_t kKVBytes = kBc * kHd * 2;  // K or V
constexpr uint32_t kQBytes = kBr * kHd * 2;   // Q or dO, one stage
constexpr uint32_t kPBytes = kBc * kBr * 2;   // Pᵀ or dSᵀ, one buffer
constexpr uint32_t kVecBytes = kBr * 4;       // lse₂ or D, one stage
constexpr size_t kSmem = 1024 + 2 * size_t(kKVBytes) + 2 * size_t(kNs) * kQBytes + 4 * size_t(kPBytes) +
                         2 * size_t(kNs) * kVecBytes;
static_assert(kSmem <= 227 * 1024, "shared memory per block");
static_assert(kWsPad % kBr == 0 && kBr == kWsBrMin, "query tiles tile the padding; one turn counter pair each");

// Byte offset, within a stage ([Q: 4 regions of 64 columns][dO: 4 regions], 8 KB each), of the
// 32-column fp32 dQ region r (0..3) of consumer c: its Q regions 2c, 2c+1, then its dO regions.
__device__ __forceinline__ uint32_t dq_region(int c, int r) { return (2 * c + (r & 1) + 4 * (r >> 1)) * 8192u; }

__global__ void __launch_bounds__(384, 1)
    attention_bwd_ws_wide_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                                 const __grid_constant__ CUtensorMap tm_v, const __grid_constant__ CUtensorMap tm_do,
                                 const __grid_constant__ CUtensorMap tm_lse2,
                                 const __grid_constant__ CUtensorMap tm_dvec, const __grid_constant__ CUtensorMap tm_dq,
                                 int* __restrict__ dq_turn, float* __restrict__ dk, float* __restrict__ dv, int B,
                                 int T, int t_pad, int H, int group, DkdvSplit split, float scale_log2, float scale,
                                 bool head_major) {
#ifdef MLKV_SM90A
  extern __shared__ unsigned char smem_raw[];
  __shared__ __align__(8) uint64_t bar_kv, bar_full[kNs], bar_empty[kNs], bar_dq_full[kNs];
  unsigned char* base = smem_align1024(smem_raw);
  bf16* sK = reinterpret_cast<bf16*>(base);  // [kChunks][kBc × 64], 128-byte swizzle (TMA)
  bf16* sV = sK + kBc * kHd;                 // [kChunks][kBc × 64]
  bf16* sQ = sV + kBc * kHd;                 // [kNs][Q, dO][kChunks][kBr × 64]; later this step's dQ
  bf16* sP = sQ + kNs * 2 * kBr * kHd;       // [2][kBc × kBr]  Pᵀ, keys × queries, 128-byte swizzle
  bf16* sdS = sP + 2 * kBc * kBr;            // [2][kBc × kBr]  dSᵀ
  float* sL = reinterpret_cast<float*>(sdS + 2 * kBc * kBr);  // [kNs][kBr]  lse₂
  float* sD = sL + kNs * kBr;                                 // [kNs][kBr]  D

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
  const int KVH = H / group;
  const BwdBlockWork w = bwd_block_work<kBc, kBr>(split, B, T, H, group, 1);  // one item: K/V once
  const int jt = w.jt, b = w.b, kv0 = w.kv0;

  if (tid == 0) {
    mbar_init(&bar_kv, 1);
#pragma unroll
    for (int s = 0; s < kNs; ++s) {
      mbar_init(&bar_full[s], 1);
      mbar_init(&bar_empty[s], 1);    // the writer, once TMA has read this step's dQ from the stage
      mbar_init(&bar_dq_full[s], 8);  // one arrival per consumer warp
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (wg == 0) {
    regs_dealloc<kBwdProducerRegs>();
    if (tid == 0) {  // loads; a stage is [Q: kChunks regions][dO: kChunks regions]
      ws_bwd_load<kHd, kBc, kBr, kNs, 1>(w, &tm_q, &tm_k, &tm_v, &tm_do, &tm_lse2, &tm_dvec, sK, sV, kBc * kHd, sQ,
                                         sQ + kChunks * kBr * 64, 2 * kChunks * kBr * 64, sL, sD, &bar_kv,
                                         nullptr, bar_full, bar_empty, H, KVH, split.heads_per, t_pad,
                                         head_major);
    } else if (tid == 32) {  // the dQ writer
      for (int t = 0; t < w.n_steps; ++t) {
        const int s = t % kNs;
        const Step st = item_step<1>(w, t, split.heads_per, head_major).st;
        int* turn = dq_turn + (int64_t(b) * H + st.h) * w.n_q + st.qi;
        const int row = (b * H + st.h) * t_pad + st.qi * kBr;
        const unsigned char* stage = reinterpret_cast<const unsigned char*>(sQ + s * 2 * kBr * kHd);
        mbar_wait(&bar_dq_full[s], (t / kNs) & 1);
        dq_turn_wait(turn, jt);
#pragma unroll
        for (int c = 0; c < 2; ++c)
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            if (jt == 0)
              tma_store_2d(&tm_dq, c * 128 + r * 32, row, stage + dq_region(c, r));
            else
              tma_reduce_add_2d(&tm_dq, c * 128 + r * 32, row, stage + dq_region(c, r));
          }
        bulk_commit();
        bulk_wait_read<0>();
        mbar_arrive(&bar_empty[s]);  // the loads may refill the stage
        bulk_wait<0>();
        dq_turn_pass(turn, jt + 1);
      }
    }
    return;
  }

  regs_alloc<kBwdConsumerRegs>();
  const int cw = wg - 1, wq = warp & 3;
  const int key_r = kv0 + wq * 16 + (lane >> 2);  // this thread's keys: key_r, key_r + 8
  const int q_half = cw * 32;                      // first of this consumer's 32 queries in Sᵀ, dPᵀ
  float dva[64], dka[64];                          // 64 keys × this consumer's 128 columns
#pragma unroll
  for (int i = 0; i < 64; ++i) dva[i] = dka[i] = 0.f;
  float s_t[16], dpt[16], dqa[64];  // Sᵀ, dPᵀ: 64 keys × 32 queries; dQ: 64 queries × 128 columns

  const uint32_t k_addr = smem_addr(sK), v_addr = smem_addr(sV);
  mbar_wait(&bar_kv, 0);

  for (int t = 0; t < w.n_steps; ++t) {
    const int s = t % kNs;
    const Step stp = item_step<1>(w, t, split.heads_per, head_major).st;
    const int qr0 = stp.qi * kBr;
    const uint32_t q_addr = smem_addr(sQ + s * 2 * kBr * kHd);
    const uint32_t do_addr = q_addr + kQBytes;
    mbar_wait(&bar_full[s], (t / kNs) & 1);

    // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ for this consumer's 32 queries (K-major, 16 k-steps of 16 columns).
#pragma unroll
    for (int i = 0; i < 16; ++i) s_t[i] = dpt[i] = 0.f;
    fence_regs(s_t);
    fence_regs(dpt);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kHd / 16; ++ks) {
      const uint32_t in = (ks / 4) * kBc * 128 + (ks % 4) * 32;
      const uint32_t inq = (ks / 4) * kBr * 128 + q_half * 128 + (ks % 4) * 32;
      WgmmaSS<32>::run(s_t, desc_sw128(k_addr + in, 16, 1024), desc_sw128(q_addr + inq, 16, 1024), ks > 0);
    }
    wgmma_commit();
#pragma unroll
    for (int ks = 0; ks < kHd / 16; ++ks) {
      const uint32_t in = (ks / 4) * kBc * 128 + (ks % 4) * 32;
      const uint32_t inq = (ks / 4) * kBr * 128 + q_half * 128 + (ks % 4) * 32;
      WgmmaSS<32>::run(dpt, desc_sw128(v_addr + in, 16, 1024), desc_sw128(do_addr + inq, 16, 1024), ks > 0);
    }
    wgmma_commit();

    // Pᵀ with the causal mask where one of these queries precedes one of the keys; dSᵀ.
    const bool need_mask = qr0 + q_half < kv0 + kBc - 1;
    const uint32_t col_addr = smem_addr(sL + s * kBr + q_half + (lane & 3) * 2);
    const uint32_t d_delta = uint32_t(kNs * kBr * 4);  // sD is kNs stages past sL
    wgmma_wait<1>();
    fence_regs(s_t);
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const float2 l2 = lds_f2(col_addr + nt * 32);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qc = q_half + nt * 8 + (lane & 3) * 2 + (e & 1);
        float p = fast_exp2(fmaf(s_t[4 * nt + e], scale_log2, -((e & 1) ? l2.y : l2.x)));
        if (need_mask && qr0 + qc < key_r + (e >> 1) * 8) p = 0.f;
        s_t[4 * nt + e] = p;
      }
    }
    wgmma_wait<0>();
    fence_regs(dpt);
    // Pᵀ and dSᵀ → buffer t % 2 (row = key, 128 bytes = 64 queries; 16-byte chunk c of row r at
    // chunk c ^ (r % 8), r % 8 = lane / 4; this consumer's queries are chunks 4c..4c+3).
    {
      uint32_t row_off = (wq * 16 + (lane >> 2)) * 128 + (lane & 3) * 4, sw = lane >> 2;
      asm volatile("" : "+r"(row_off), "+r"(sw));  // keep the store offsets out of the loop's live set
      unsigned char* p_buf = reinterpret_cast<unsigned char*>(sP + (t & 1) * kBc * kBr) + row_off;
      unsigned char* ds_buf = reinterpret_cast<unsigned char*>(sdS + (t & 1) * kBc * kBr) + row_off;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const float2 d2 = lds_f2(col_addr + d_delta + nt * 32);
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const int e0 = 4 * nt + 2 * hr;
          const uint32_t at = hr * 1024 + (((cw * 4 + nt) ^ sw) << 4);
          *reinterpret_cast<uint32_t*>(p_buf + at) = pack_bf16(s_t[e0], s_t[e0 + 1]);
          *reinterpret_cast<uint32_t*>(ds_buf + at) =
              pack_bf16(s_t[e0] * (dpt[e0] - d2.x), s_t[e0 + 1] * (dpt[e0 + 1] - d2.y));
        }
      }
    }
    fence_proxy_async();
    named_sync(1, 256);  // both halves of Pᵀ and dSᵀ are written

    // dV[:, c] += Pᵀ·dO[:, c], dK[:, c] += dSᵀ·Q[:, c] (A K-major: 16 queries a k-step; B = this
    // consumer's two 64-column regions, read MN-major), then dQ[:, c] = dS·K[:, c] (A = dS read
    // MN-major from dSᵀ, B = K's regions MN-major; 16 keys a k-step).
    const uint32_t p_addr = smem_addr(sP + (t & 1) * kBc * kBr), ds_addr = smem_addr(sdS + (t & 1) * kBc * kBr);
    const uint32_t col_region = 2 * cw * kBr * 128;  // this consumer's first 64-column region of Q, dO
    fence_regs(dva);
    fence_regs(dka);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBr / 16; ++kk)
      WgmmaSS<128, 1>::run(dva, desc_sw128(p_addr + kk * 32, 16, 1024),
                           desc_sw128(do_addr + col_region + kk * 2048, kBr * 128, 1024), 1);
#pragma unroll
    for (int kk = 0; kk < kBr / 16; ++kk)
      WgmmaSS<128, 1>::run(dka, desc_sw128(ds_addr + kk * 32, 16, 1024),
                           desc_sw128(q_addr + col_region + kk * 2048, kBr * 128, 1024), 1);
    wgmma_commit();
#pragma unroll
    for (int i = 0; i < 64; ++i) dqa[i] = 0.f;
    fence_regs(dqa);
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk)
      WgmmaSS<128, 1, 1>::run(dqa, desc_sw128(ds_addr + kk * 2048, kBc * 128, 1024),
                              desc_sw128(k_addr + 2 * cw * kBc * 128 + kk * 2048, kBc * 128, 1024), kk > 0);
    wgmma_commit();
    wgmma_wait<1>();  // dV, dK done: this consumer's regions of Q and dO are free
    fence_regs(dva);
    fence_regs(dka);
    wgmma_wait<0>();
    fence_regs(dqa);

    // dQ[:, c] → this consumer's four regions of the stage in the TMA box layout (32 fp32 columns
    // × 64 rows, 128-byte swizzle). Its columns 8·nt + 2·(lane % 4) + {0, 1} are region nt / 4,
    // chunk 2·(nt % 4) + (lane % 4) / 2 swizzled by row % 8 = lane / 4, offset 8·(lane % 2).
    {
      uint32_t row_off = (wq * 16 + (lane >> 2)) * 128 + (lane & 1) * 8, sw = ((lane & 3) >> 1) ^ (lane >> 2);
      asm volatile("" : "+r"(row_off), "+r"(sw));  // as for Pᵀ: no hoisted offsets
      unsigned char* stage = reinterpret_cast<unsigned char*>(sQ + s * 2 * kBr * kHd) + row_off;
#pragma unroll
      for (int nt = 0; nt < 16; ++nt)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr)
          *reinterpret_cast<float2*>(stage + dq_region(cw, nt / 4) + hr * 1024 + (((2 * (nt % 4)) ^ sw) << 4)) =
              make_float2(dqa[4 * nt + 2 * hr], dqa[4 * nt + 2 * hr + 1]);
    }
    fence_proxy_async();
    __syncwarp();
    if (lane == 0) mbar_arrive(&bar_dq_full[s]);  // this warp's rows of the partial are written
  }

  // dK, dV: slice 0 adds into the caller's sums; slice s > 0 writes partial s-1.
  const DkdvOut dst(dk, dv, split, w.slice, int64_t(B) * KVH * T * kHd);
  add_dkdv_acc<128, kHd>(dst, (int64_t(b) * KVH + w.g0) * T * kHd + cw * 128, key_r, T, lane, dka, dva, scale);
#endif
}

}  // namespace

void launch_bwd_ws_wide(float* dk, float* dv, const void* dout, const void* q, const void* k, const void* v, int B,
                        int T, int H, int KVH, const DkdvSplit& split, const WsBwdScratch& ws, cudaStream_t stream) {
  const int t_pad = ws_t_pad(T);
  const int64_t rows = int64_t(B) * H * t_pad;
  const float scale = 1.f / std::sqrt(float(kHd));
  const CUtensorMap tm_q = make_tmap_bf16_3d(q, kHd, T, uint64_t(B) * H, kBr);
  const CUtensorMap tm_k = make_tmap_bf16_3d(k, kHd, T, uint64_t(B) * KVH, kBc);
  const CUtensorMap tm_v = make_tmap_bf16_3d(v, kHd, T, uint64_t(B) * KVH, kBc);
  const CUtensorMap tm_do = make_tmap_bf16_heads(dout, kHd, H, T, B, kBr);
  const CUtensorMap tm_lse2 = make_tmap_f32_1d(ws.lse2, uint64_t(rows), kBr);
  const CUtensorMap tm_dvec = make_tmap_f32_1d(ws.dvec, uint64_t(rows), kBr);
  const CUtensorMap tm_dq = make_tmap_f32_2d(ws.dq_acc, kHd, uint64_t(rows), kBr);
  allow_smem(attention_bwd_ws_wide_kernel, kSmem);
  const int64_t blocks = int64_t((T + kBc - 1) / kBc) * KVH * B * split.split;
  attention_bwd_ws_wide_kernel<<<dim3(unsigned(blocks)), 384, kSmem, stream>>>(
      tm_q, tm_k, tm_v, tm_do, tm_lse2, tm_dvec, tm_dq, ws.dq_turn, dk, dv, B, T, t_pad, H, H / KVH,
      ws_bwd_sectioned(split, B, T, H, KVH, kHd, 1),
      scale * kLog2e, scale, ws_bwd_head_major());
  check_launch("attention_bwd_ws_wide_kernel");
}

}  // namespace mlkv::cuda::attn
