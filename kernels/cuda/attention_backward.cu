// MLKV flash-attention backward, deterministic (no atomics), in two kernels:
//
//  1. dq kernel, one block per (query tile, h, b): D = rowsum(dO ∘ O) for its rows (written to
//     the workspace for kernel 2), then over the visible K/V tiles it recomputes P = exp(S − lse),
//     dP = dO · Vᵀ, dS = P ∘ (dP − D) and accumulates dQ = scale · dS · K in registers.
//     dq[B, H, T, hd] bf16 is assigned.
//  2. dK/dV kernel, one block per (K/V tile, kv head, b): the block owns its 64 keys and loops
//     over every query head of the KV head's group and every query tile at or below the diagonal,
//     recomputing Pᵀ and dSᵀ and summing dV += Pᵀ · dO and dK += scale · dSᵀ · Q in registers.
//     At the end it adds (plain read-add-write) into the fp32 group buffers dk, dv[B, KVH, T, hd]:
//     no other block touches those rows, so the sum is deterministic, and across calls the
//     buffers collect every layer that reads the shared K/V (DESIGN §3b). With few such blocks
//     the group's heads are split over several blocks whose partial sums a third kernel adds in a
//     fixed order (DkdvSplit in attention_launch.cuh; both kernel families).
//
// Kernel 2 recomputes what kernel 1 computed (S and dP): 7 tile products per (query, key) tile
// pair instead of FlashAttention-2's 5, the price of no atomics and no per-KV-tile dQ partials.
// On Hopper at hd 64 and 128, attention_backward takes the warp-specialised one-kernel backward
// instead (attention_sm90_ws_backward.cu: 5 products, dQ partials added in key-tile order).
#include <cmath>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/attention_sm90.h"
#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/device_scratch.h"

namespace mlkv::cuda {
namespace attn {
namespace {

// ------------------------------------------------------------------------------------------
// Kernel 1: dQ (and D).
template <int HD, int NW, int BC>
struct DqTile {
  static constexpr int kBr = 16 * NW;
  static constexpr int kLd = HD + 8;
  static constexpr int kThreads = NW * 32;
  static constexpr size_t kSmem = size_t(2 * kBr + 4 * BC) * kLd * sizeof(bf16);  // Q, dO, 2 stages K, V
};

template <int HD, int NW, int BC>
__global__ void __launch_bounds__(NW * 32)
    attention_bwd_dq_kernel(bf16* __restrict__ dq, float* __restrict__ dvec, const bf16* __restrict__ dout,
                            const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                            const bf16* __restrict__ out, const float* __restrict__ lse, int T, int H, int group,
                            float scale_log2, float scale) {
  using Tile = DqTile<HD, NW, BC>;
  constexpr int kLd = Tile::kLd, kBr = Tile::kBr, kNT = Tile::kThreads;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);  // [kBr][kLd]
  bf16* sdO = sQ + kBr * kLd;                    // [kBr][kLd]
  bf16* sK = sdO + kBr * kLd;                    // [2][BC][kLd]
  bf16* sV = sK + 2 * BC * kLd;                  // [2][BC][kLd]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int qt = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  const int KVH = H / group, g = h / group;
  const int q0 = qt * kBr;
  const int64_t row_stride = int64_t(H) * HD;  // of out and dout [B, T, H·hd]
  const bf16* qp = q + (int64_t(b) * H + h) * T * HD;
  const bf16* kp = k + (int64_t(b) * KVH + g) * T * HD;
  const bf16* vp = v + (int64_t(b) * KVH + g) * T * HD;
  const bf16* dop = dout + int64_t(b) * T * row_stride + h * HD;
  const bf16* op = out + int64_t(b) * T * row_stride + h * HD;

  const int kv_end = min(q0 + kBr, T);
  const int n_tiles = (kv_end + BC - 1) / BC;

  load_tile_async<kBr, HD, kNT>(sQ, qp, HD, q0, T, tid);
  load_tile_async<kBr, HD, kNT>(sdO, dop, row_stride, q0, T, tid);
  load_tile_async<BC, HD, kNT>(sK, kp, HD, 0, T, tid);
  load_tile_async<BC, HD, kNT>(sV, vp, HD, 0, T, tid);
  cp_async_commit();

  const int wrow0 = q0 + warp * 16;
  const int r0 = wrow0 + (lane >> 2);

  // D for this warp's 16 rows, two lanes a row, straight from global (overlaps the copies above).
  float d_mine;
  {
    const int rr = lane >> 1, t = wrow0 + rr;
    float acc = 0.f;
    if (t < T) {
      const bf16* a = dop + int64_t(t) * row_stride + (lane & 1) * (HD / 2);
      const bf16* c = op + int64_t(t) * row_stride + (lane & 1) * (HD / 2);
#pragma unroll
      for (int ch = 0; ch < HD / 16; ++ch) {
        const uint4 x = *reinterpret_cast<const uint4*>(a + ch * 8);
        const uint4 y = *reinterpret_cast<const uint4*>(c + ch * 8);
        const __nv_bfloat162* x2 = reinterpret_cast<const __nv_bfloat162*>(&x);
        const __nv_bfloat162* y2 = reinterpret_cast<const __nv_bfloat162*>(&y);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 xf = __bfloat1622float2(x2[i]), yf = __bfloat1622float2(y2[i]);
          acc = fmaf(xf.x, yf.x, acc);
          acc = fmaf(xf.y, yf.y, acc);
        }
      }
    }
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    d_mine = acc;
    if (t < T && (lane & 1) == 0) dvec[(int64_t(b) * H + h) * T + t] = acc;
  }
  // The MMA layout wants rows lane/4 and lane/4 + 8 of the warp; row rr sits in lane 2·rr.
  const float drow[2] = {__shfl_sync(0xffffffffu, d_mine, 2 * (lane >> 2)),
                         __shfl_sync(0xffffffffu, d_mine, 2 * ((lane >> 2) + 8))};
  const float* lp = lse + (int64_t(b) * H + h) * T;
  const float lrow[2] = {r0 < T ? lp[r0] * kLog2e : 0.f, r0 + 8 < T ? lp[r0 + 8] * kLog2e : 0.f};

  float dqa[HD / 8][4] = {};
  for (int j = 0; j < n_tiles; ++j) {
    const int st = j & 1;
    if (j + 1 < n_tiles) {
      load_tile_async<BC, HD, kNT>(sK + (st ^ 1) * BC * kLd, kp, HD, (j + 1) * BC, T, tid);
      load_tile_async<BC, HD, kNT>(sV + (st ^ 1) * BC * kLd, vp, HD, (j + 1) * BC, T, tid);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const bf16* cK = sK + st * BC * kLd;
    const bf16* cV = sV + st * BC * kLd;
    const int c0 = j * BC;
    if (c0 > wrow0 + 15) {  // nothing of this tile is visible to this warp's rows
      __syncthreads();
      continue;
    }

    // S = Q · Kᵀ and dP = dO · Vᵀ (16 × BC per warp)
    float s[BC / 8][4] = {}, dp[BC / 8][4] = {};
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
      uint32_t aq[4], ado[4];
      load_a(aq, sQ, kLd, warp * 16, kk * 16, lane);
      load_a(ado, sdO, kLd, warp * 16, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < BC / 16; ++np) {
        uint32_t bk[4], bv[4];
        load_b_nk(bk, cK, kLd, np * 16, kk * 16, lane);
        mma_bf16(s[2 * np], aq, bk[0], bk[1]);
        mma_bf16(s[2 * np + 1], aq, bk[2], bk[3]);
        load_b_nk(bv, cV, kLd, np * 16, kk * 16, lane);
        mma_bf16(dp[2 * np], ado, bv[0], bv[1]);
        mma_bf16(dp[2 * np + 1], ado, bv[2], bv[3]);
      }
    }

    // P = exp2(S·scale·log2e − lse·log2e) (0 where masked); dS = P ∘ (dP − D), kept in s.
    const bool need_mask = c0 + BC - 1 > wrow0 || c0 + BC > T;
#pragma unroll
    for (int nt = 0; nt < BC / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = c0 + nt * 8 + (lane & 3) * 2 + (e & 1);
        const int row = r0 + (e >> 1) * 8;
        float p = fast_exp2(fmaf(s[nt][e], scale_log2, -lrow[e >> 1]));
        if (need_mask && (col > row || col >= T)) p = 0.f;
        s[nt][e] = p * (dp[nt][e] - drow[e >> 1]);
      }

    // dQ += dS · K (K tile read as [k = key][n = d]).
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      uint32_t a[4];
      acc_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int dp2 = 0; dp2 < HD / 16; ++dp2) {
        uint32_t bb[4];
        load_b_kn(bb, cK, kLd, kk * 16, dp2 * 16, lane);
        mma_bf16(dqa[2 * dp2], a, bb[0], bb[1]);
        mma_bf16(dqa[2 * dp2 + 1], a, bb[2], bb[3]);
      }
    }
    __syncthreads();
  }

  // dq = scale · dQ, staged through this warp's rows of sQ into dq[b, h, t, :].
  bf16* sO = sQ + warp * 16 * kLd;
#pragma unroll
  for (int dt = 0; dt < HD / 8; ++dt) {
    const int col = dt * 8 + (lane & 3) * 2;
    *reinterpret_cast<uint32_t*>(sO + (lane >> 2) * kLd + col) = pack_bf16(dqa[dt][0] * scale, dqa[dt][1] * scale);
    *reinterpret_cast<uint32_t*>(sO + ((lane >> 2) + 8) * kLd + col) =
        pack_bf16(dqa[dt][2] * scale, dqa[dt][3] * scale);
  }
  __syncwarp();
  constexpr int kChunks = HD / 8;
  bf16* dqp = dq + (int64_t(b) * H + h) * T * HD;
  for (int c = lane; c < 16 * kChunks; c += 32) {
    const int r = c / kChunks, ch = c % kChunks;
    const int t = wrow0 + r;
    if (t < T)
      *reinterpret_cast<uint4*>(dqp + int64_t(t) * HD + ch * 8) = *reinterpret_cast<const uint4*>(sO + r * kLd + ch * 8);
  }
}

// ------------------------------------------------------------------------------------------
// Kernel 2: dK, dV. 8 warps, 64 keys × 64 queries per step.
//   phase 1: warp w computes Sᵀ and dPᵀ for keys 16·(w%4).. and queries 32·(w/4).. (16 × 32),
//            turns them into Pᵀ and dSᵀ and stores both as bf16 in shared memory;
//   phase 2: warp w accumulates dV, dK for keys 16·(w%4).. and head-dim half w/4 (16 × hd/2),
//            reading Pᵀ, dSᵀ as A operands and dO, Q as [k = query][n = d] B operands.
// Splitting phase 2 by head-dim half keeps the two accumulators at hd/2 registers per thread
// each, which is what lets hd = 256 fit.
template <int HD>
struct DkdvTile {
  static constexpr int kBc = 64, kBr = 64, kThreads = 256;  // 8 warps
  static constexpr int kLd = HD + 8, kLdP = kBr + 8;
  static constexpr size_t kSmemBf16 = size_t(2 * kBc * kLd      // K, V (resident)
                                             + 4 * kBr * kLd    // 2 stages of Q, dO
                                             + 2 * kBc * kLdP)  // Pᵀ, dSᵀ
                                      * sizeof(bf16);
  static constexpr size_t kSmem = kSmemBf16 + 4 * kBr * sizeof(float);  // 2 stages of lse, D
};

template <int HD>
__global__ void __launch_bounds__(256)
    attention_bwd_dkdv_kernel(float* __restrict__ dk, float* __restrict__ dv, const bf16* __restrict__ dout,
                              const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                              const float* __restrict__ lse, const float* __restrict__ dvec, int B, int T,
                              int H, int group, DkdvSplit split, float scale_log2, float scale) {
  using Tile = DkdvTile<HD>;
  constexpr int kLd = Tile::kLd, kLdP = Tile::kLdP, kBr = Tile::kBr, kBc = Tile::kBc, kNT = Tile::kThreads;
  constexpr int kHalf = HD / 2, kNT2 = kHalf / 8;  // phase-2 columns per warp, and their n8 tiles
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sK = reinterpret_cast<bf16*>(smem_raw);  // [kBc][kLd]
  bf16* sV = sK + kBc * kLd;                     // [kBc][kLd]
  bf16* sQ = sV + kBc * kLd;                     // [2][kBr][kLd]
  bf16* sdO = sQ + 2 * kBr * kLd;                // [2][kBr][kLd]
  bf16* sP = sdO + 2 * kBr * kLd;                // [kBc][kLdP]  Pᵀ
  bf16* sdS = sP + kBc * kLdP;                   // [kBc][kLdP]  dSᵀ
  float* sL = reinterpret_cast<float*>(smem_raw + Tile::kSmemBf16);  // [2][kBr] lse
  float* sD = sL + 2 * kBr;                                          // [2][kBr] D

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int KVH = H / group;
  const DkdvBlock blk = dkdv_block(split, B, KVH);
  const int jt = blk.jt, g = blk.g, b = blk.b;
  const int h0 = g * group + blk.slice * split.heads_per;  // first query head of this block
  const int kv0 = jt * kBc;
  const int64_t row_stride = int64_t(H) * HD;

  const int n_q = (T + kBr - 1) / kBr;
  const int q_first = kv0 / kBr;  // first query tile reaching this key tile (kBr == kBc)
  const int per_head = n_q - q_first;
  const int n_steps = split.heads_per * per_head;

  auto load_step = [&](int step, int stage) {
    const int h = h0 + step / per_head, qi = q_first + step % per_head;
    const int qr0 = qi * kBr;
    load_tile_async<kBr, HD, kNT>(sQ + stage * kBr * kLd, q + (int64_t(b) * H + h) * T * HD, HD, qr0, T, tid);
    load_tile_async<kBr, HD, kNT>(sdO + stage * kBr * kLd, dout + int64_t(b) * T * row_stride + h * HD, row_stride,
                                  qr0, T, tid);
    const int64_t vec0 = (int64_t(b) * H + h) * T;
    load_vec_async<kBr, kNT>(sL + stage * kBr, lse + vec0, qr0, T, tid);
    load_vec_async<kBr, kNT>(sD + stage * kBr, dvec + vec0, qr0, T, tid);
  };

  const int64_t kvbase = (int64_t(b) * KVH + g) * T * HD;
  load_tile_async<kBc, HD, kNT>(sK, k + kvbase, HD, kv0, T, tid);
  load_tile_async<kBc, HD, kNT>(sV, v + kvbase, HD, kv0, T, tid);
  load_step(0, 0);
  cp_async_commit();

  const int r1 = warp & 3, c1 = warp >> 2;  // phase 1: key strip, query half
  const int r2 = warp & 3, c2 = warp >> 2;  // phase 2: key strip, head-dim half
  const int key_r = kv0 + r1 * 16 + (lane >> 2);  // this thread's keys in phase 1: key_r, key_r + 8

  float dva[kNT2][4] = {}, dka[kNT2][4] = {};
  for (int step = 0; step < n_steps; ++step) {
    const int st = step & 1;
    if (step + 1 < n_steps) load_step(step + 1, st ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const bf16* cQ = sQ + st * kBr * kLd;
    const bf16* cdO = sdO + st * kBr * kLd;
    const float* cL = sL + st * kBr;
    const float* cD = sD + st * kBr;
    const int qr0 = (q_first + step % per_head) * kBr;

    // ---- phase 1: Sᵀ = K · Qᵀ, dPᵀ = V · dOᵀ (16 keys × 32 queries per warp)
    float s[4][4] = {}, dp[4][4] = {};
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
      uint32_t ak[4], av[4];
      load_a(ak, sK, kLd, r1 * 16, kk * 16, lane);
      load_a(av, sV, kLd, r1 * 16, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        uint32_t bq[4], bo[4];
        load_b_nk(bq, cQ, kLd, c1 * 32 + np * 16, kk * 16, lane);
        mma_bf16(s[2 * np], ak, bq[0], bq[1]);
        mma_bf16(s[2 * np + 1], ak, bq[2], bq[3]);
        load_b_nk(bo, cdO, kLd, c1 * 32 + np * 16, kk * 16, lane);
        mma_bf16(dp[2 * np], av, bo[0], bo[1]);
        mma_bf16(dp[2 * np + 1], av, bo[2], bo[3]);
      }
    }
    // Pᵀ = exp2(Sᵀ·scale·log2e − lse·log2e), zero where the query is before the key or past T;
    // dSᵀ = Pᵀ ∘ (dPᵀ − D). Both go to shared memory as bf16 for phase 2.
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int ql = c1 * 32 + nt * 8 + (lane & 3) * 2;  // local query column of e = 0 (e = 1: +1)
      float p[4], ds[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qc = ql + (e & 1), qg = qr0 + qc, key = key_r + (e >> 1) * 8;
        float pe = fast_exp2(fmaf(s[nt][e], scale_log2, -cL[qc] * kLog2e));
        if (qg < key || qg >= T) pe = 0.f;
        p[e] = pe;
        ds[e] = pe * (dp[nt][e] - cD[qc]);
      }
      const int row = r1 * 16 + (lane >> 2);
      *reinterpret_cast<uint32_t*>(sP + row * kLdP + ql) = pack_bf16(p[0], p[1]);
      *reinterpret_cast<uint32_t*>(sP + (row + 8) * kLdP + ql) = pack_bf16(p[2], p[3]);
      *reinterpret_cast<uint32_t*>(sdS + row * kLdP + ql) = pack_bf16(ds[0], ds[1]);
      *reinterpret_cast<uint32_t*>(sdS + (row + 8) * kLdP + ql) = pack_bf16(ds[2], ds[3]);
    }
    __syncthreads();

    // ---- phase 2: dV += Pᵀ · dO, dK += dSᵀ · Q (16 keys × hd/2 per warp)
#pragma unroll
    for (int kk = 0; kk < kBr / 16; ++kk) {
      uint32_t ap[4], ads[4];
      load_a(ap, sP, kLdP, r2 * 16, kk * 16, lane);
      load_a(ads, sdS, kLdP, r2 * 16, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < kNT2 / 2; ++np) {
        const int n0 = c2 * kHalf + np * 16;
        uint32_t bo[4], bq[4];
        load_b_kn(bo, cdO, kLd, kk * 16, n0, lane);
        mma_bf16(dva[2 * np], ap, bo[0], bo[1]);
        mma_bf16(dva[2 * np + 1], ap, bo[2], bo[3]);
        load_b_kn(bq, cQ, kLd, kk * 16, n0, lane);
        mma_bf16(dka[2 * np], ads, bq[0], bq[1]);
        mma_bf16(dka[2 * np + 1], ads, bq[2], bq[3]);
      }
      if constexpr (kNT2 % 2 == 1) {  // hd = 80: 5 n8 tiles per half
        const int n0 = c2 * kHalf + (kNT2 - 1) * 8;
        uint32_t bo[2], bq[2];
        load_b_kn_one(bo, cdO, kLd, kk * 16, n0, lane);
        mma_bf16(dva[kNT2 - 1], ap, bo[0], bo[1]);
        load_b_kn_one(bq, cQ, kLd, kk * 16, n0, lane);
        mma_bf16(dka[kNT2 - 1], ads, bq[0], bq[1]);
      }
    }
    __syncthreads();  // sP/sdS and this stage are rewritten next step
  }

  // Add this block's sums into the group buffers (rows it owns exclusively); slices after the
  // first write their partials instead (added by add_dkdv_partials).
  const DkdvOut dst(dk, dv, split, blk.slice, int64_t(B) * KVH * T * HD);
  const int key_w = kv0 + r2 * 16 + (lane >> 2);
#pragma unroll
  for (int nt = 0; nt < kNT2; ++nt) {
    const int col = c2 * kHalf + nt * 8 + (lane & 3) * 2;
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int key = key_w + hr * 8;
      if (key >= T) continue;
      dst.add(kvbase + int64_t(key) * HD + col, dka[nt][2 * hr] * scale, dka[nt][2 * hr + 1] * scale,
              dva[nt][2 * hr], dva[nt][2 * hr + 1]);
    }
  }
}

template <int HD, int NW, int BC>
void launch_dq(void* dq, float* dvec, const void* dout, const void* q, const void* k, const void* v, const void* out,
               const float* lse, int B, int T, int H, int KVH, cudaStream_t stream) {
  using Tile = DqTile<HD, NW, BC>;
  const float scale = 1.f / std::sqrt(float(HD));
  auto kernel = attention_bwd_dq_kernel<HD, NW, BC>;
  allow_smem(kernel, Tile::kSmem);
  const dim3 grid((T + Tile::kBr - 1) / Tile::kBr, H, B);
  kernel<<<grid, Tile::kThreads, Tile::kSmem, stream>>>(
      static_cast<bf16*>(dq), dvec, static_cast<const bf16*>(dout), static_cast<const bf16*>(q),
      static_cast<const bf16*>(k), static_cast<const bf16*>(v), static_cast<const bf16*>(out), lse, T, H, H / KVH,
      scale * kLog2e, scale);
  check_launch("attention_bwd_dq_kernel");
}

constexpr int kDkdvKeyTile = 64;  // DkdvTile<HD>::kBc for every HD

template <int HD>
void launch_dkdv(float* dk, float* dv, const float* dvec, const void* dout, const void* q, const void* k,
                 const void* v, const float* lse, int B, int T, int H, int KVH, const DkdvSplit& split,
                 cudaStream_t stream) {
  using Tile = DkdvTile<HD>;
  static_assert(Tile::kBc == kDkdvKeyTile);
  const float scale = 1.f / std::sqrt(float(HD));
  auto kernel = attention_bwd_dkdv_kernel<HD>;
  allow_smem(kernel, Tile::kSmem);
  const int64_t blocks = int64_t((T + Tile::kBc - 1) / Tile::kBc) * KVH * B * split.split;
  kernel<<<dim3(unsigned(blocks)), Tile::kThreads, Tile::kSmem, stream>>>(
      dk, dv, static_cast<const bf16*>(dout), static_cast<const bf16*>(q), static_cast<const bf16*>(k),
      static_cast<const bf16*>(v), lse, dvec, B, T, H, H / KVH, split, scale * kLog2e, scale);
  check_launch("attention_bwd_dkdv_kernel");
}

// ------------------------------------------------------------------------------------------
// Workspace: one lazily grown buffer per device, for D [B, H, T] fp32 and, after it, the dK/dV
// head split's partials.
DeviceScratch g_workspace("attention workspace");
float* workspace(size_t bytes) { return static_cast<float*>(g_workspace.get(bytes)); }

// D's floats, rounded up so that the partials after it stay 16-byte aligned (float4 reduction).
size_t dvec_floats(int B, int T, int H) { return (size_t(B) * H * T + 63) / 64 * 64; }

// The head split of whichever dK/dV kernel attention_backward will run for hd (ws: the
// warp-specialised backward, ws_backward_enabled).
DkdvSplit dkdv_split_for(int B, int T, int H, int KVH, int hd, bool ws) {
  if (ws) return choose_dkdv_split(B, T, H, KVH, backward_ws_key_tile(hd), hd == 256);
  const bool sm90 = sm90_enabled() && backward_dkdv_sm90_supports(hd);
  return choose_dkdv_split(B, T, H, KVH, sm90 ? backward_dkdv_sm90_key_tile(hd) : kDkdvKeyTile);
}

// Workspace floats: the warp-specialised backward's scratch (D among it) or the two-kernel
// scheme's D; then the head split's partials.
size_t head_floats(int B, int T, int H, int hd, bool ws) {
  return ws ? ws_backward_scratch_floats(B, T, H, hd) : dvec_floats(B, T, H);
}

}  // namespace
}  // namespace attn

size_t attention_backward_workspace_bytes(int B, int T, int H, int KVH, int hd) {
  const bool ws = attn::ws_backward_enabled(hd, H / KVH);
  const attn::DkdvSplit split = attn::dkdv_split_for(B, T, H, KVH, hd, ws);
  return (attn::head_floats(B, T, H, hd, ws) + attn::dkdv_partial_floats(split, B, T, KVH, hd)) * sizeof(float);
}

void attention_release_workspace() { attn::g_workspace.release(); }

void attention_backward(void* dq, float* dk, float* dv, const void* dout, const void* q, const void* k,
                        const void* v, const void* out, const float* lse, int B, int T, int H, int KVH, int hd,
                        bool accumulate, cudaStream_t stream) {
  attn::check_shape("attention_backward", B, T, H, KVH, hd);
  const void* ptrs[] = {dq, dk, dv, dout, q, k, v, out};
  for (const void* p : ptrs)
    if (!attn::aligned16(p)) throw Error("attention_backward: all tensors must be 16-byte aligned");
  const bool ws = attn::ws_backward_enabled(hd, H / KVH);
  attn::DkdvSplit split = attn::dkdv_split_for(B, T, H, KVH, hd, ws);
  split.slice0_adds = accumulate;
  const size_t n_part = attn::dkdv_partial_floats(split, B, T, KVH, hd);
  const size_t n_head = attn::head_floats(B, T, H, hd, ws);
  float* dvec = attn::workspace((n_head + n_part) * sizeof(float));
  split.part_k = dvec + n_head;
  split.part_v = split.part_k + n_part / 2;
  if (ws) {
    const attn::WsBwdScratch ws = attn::ws_backward_scratch(dvec, B, T, H, hd);
    attn::backward_sm90_ws(dq, dk, dv, dout, q, k, v, out, lse, B, T, H, KVH, hd, split, ws, stream);
    attn::add_dkdv_partials(dk, dv, split, B, T, KVH, hd, stream);
    return;
  }
  const bool sm90 = attn::sm90_enabled();
  // Kernel 1 (dq, and D for kernel 2), then kernel 2 (dK, dV), then the sum of kernel 2's head-split
  // partials (if any), on the same stream.
  if (sm90) {
    attn::backward_dq_sm90(dq, dvec, dout, q, k, v, out, lse, B, T, H, KVH, hd, stream);
  } else {
    switch (hd) {
      case 64: attn::launch_dq<64, 4, 64>(dq, dvec, dout, q, k, v, out, lse, B, T, H, KVH, stream); break;
      case 80: attn::launch_dq<80, 4, 64>(dq, dvec, dout, q, k, v, out, lse, B, T, H, KVH, stream); break;
      case 128: attn::launch_dq<128, 4, 64>(dq, dvec, dout, q, k, v, out, lse, B, T, H, KVH, stream); break;
      case 256: attn::launch_dq<256, 4, 32>(dq, dvec, dout, q, k, v, out, lse, B, T, H, KVH, stream); break;
    }
  }
  if (sm90 && attn::backward_dkdv_sm90_supports(hd)) {
    attn::backward_dkdv_sm90(dk, dv, dout, q, k, v, lse, dvec, B, T, H, KVH, hd, split, stream);
  } else {
    switch (hd) {
      case 64: attn::launch_dkdv<64>(dk, dv, dvec, dout, q, k, v, lse, B, T, H, KVH, split, stream); break;
      case 80: attn::launch_dkdv<80>(dk, dv, dvec, dout, q, k, v, lse, B, T, H, KVH, split, stream); break;
      case 128: attn::launch_dkdv<128>(dk, dv, dvec, dout, q, k, v, lse, B, T, H, KVH, split, stream); break;
      case 256: attn::launch_dkdv<256>(dk, dv, dvec, dout, q, k, v, lse, B, T, H, KVH, split, stream); break;
    }
  }
  attn::add_dkdv_partials(dk, dv, split, B, T, KVH, hd, stream);
}

}  // namespace mlkv::cuda
