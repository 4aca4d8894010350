// MLKV flash-attention backward on Hopper tensor cores (wgmma, sm_90a); the same two-kernel,
// atomic-free scheme as attention_backward.cu (read its header), with warpgroup tiles. Every
// product takes both operands from shared memory; dS and P go there as bf16 (why: see
// store_acc_cm in attention_sm90.cuh).
//
//  dq kernel, per warpgroup 64 query rows of one (b, h), per K/V tile of BC keys:
//    S = Q·Kᵀ, dP = dO·Vᵀ        wgmma (K-major operands)
//    P, dS = P∘(dP − D)          registers → dS to shared memory
//    dQ += dS·K                  wgmma (K read MN-major)
//  dK/dV kernel, per warpgroup 64 keys of one (b, kv head), 2 or 3 warpgroups a block; per query head
//  of the block's slice of the group (DkdvSplit) and per query tile of BR rows at or below the
//  diagonal:
//    Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ      wgmma (K-major operands)
//    Pᵀ, dSᵀ                     registers → shared memory
//    dV += Pᵀ·dO, dK += dSᵀ·Q    wgmma (dO, Q read MN-major)
//  then plain read-add-write of the fp32 sums into dk, dv (rows owned by this block only), or, for
//  slices after the first, a plain write into the split's partials.
#include <cmath>

#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/attention_sm90.cuh"
#include "kernels/cuda/attention_sm90.h"

namespace mlkv::cuda::attn {
namespace {

// ------------------------------------------------------------------------------------------
template <int HD, int NWG, int BC, int NS>
struct Sm90DqTile {
  static constexpr int kBr = 64 * NWG;
  static constexpr int kThreads = 128 * NWG;
  static constexpr size_t kSmem =  // Q, dO, NS stages of K and V, 2 buffers of dS
      (size_t(2 * kBr + 2 * NS * BC) * HD + size_t(2) * kBr * BC) * sizeof(bf16);
  static_assert(NS >= 4, "tile j-3's stage is the one refilled in iteration j");
  static_assert(kSmem <= 227 * 1024, "shared memory per block");
};

template <int HD, int NWG, int BC, int NS>
__global__ void __launch_bounds__(NWG * 128, 1)
    attention_bwd_dq_sm90_kernel(bf16* __restrict__ dq, float* __restrict__ dvec, const bf16* __restrict__ dout,
                                 const bf16* __restrict__ q, const bf16* __restrict__ k,
                                 const bf16* __restrict__ v, const bf16* __restrict__ out,
                                 const float* __restrict__ lse, int T, int H, int group, float scale_log2,
                                 float scale) {
#ifdef MLKV_SM90A
  using Tile = Sm90DqTile<HD, NWG, BC, NS>;
  constexpr int kBr = Tile::kBr, kNT = Tile::kThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* sdO = sQ + kBr * HD;
  bf16* sK = sdO + kBr * HD;    // [NS][BC × HD]
  bf16* sV = sK + NS * BC * HD;  // [NS][BC × HD]
  bf16* sdS = sV + NS * BC * HD;  // [2][kBr × BC]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, wq = warp & 3;
  const int qt = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  const int KVH = H / group, g = h / group;
  const int q0 = qt * kBr;
  const int64_t row_stride = int64_t(H) * HD;
  const bf16* qp = q + (int64_t(b) * H + h) * T * HD;
  const bf16* kp = k + (int64_t(b) * KVH + g) * T * HD;
  const bf16* vp = v + (int64_t(b) * KVH + g) * T * HD;
  const bf16* dop = dout + int64_t(b) * T * row_stride + h * HD;
  const bf16* op = out + int64_t(b) * T * row_stride + h * HD;
  const int kv_end = min(q0 + kBr, T);
  const int n_tiles = (kv_end + BC - 1) / BC;

  // Tile t (K and V) lives in stage t % NS; iteration j reads K_j, V_j (S, dP) and K_{j-1} (dQ).
  // At the top of iteration j every warpgroup is past the wait for dS_{j-3}·K_{j-3} (made in
  // iteration j-1), so after the barrier tile j-3's stage takes tile j+NS-3.
  const TileLoader<BC, HD, kNT> kv_loader(tid);
  auto load_kv = [&](int t) {
    kv_loader.load(sK + (t % NS) * BC * HD, kp, HD, t * BC, T, tid);
    kv_loader.load(sV + (t % NS) * BC * HD, vp, HD, t * BC, T, tid);
  };
  {
    const TileLoader<kBr, HD, kNT> q_loader(tid);
    q_loader.load(sQ, qp, HD, q0, T, tid);
    q_loader.load(sdO, dop, row_stride, q0, T, tid);
  }
  load_kv(0);
  cp_async_commit();
#pragma unroll
  for (int t = 1; t <= NS - 4; ++t) {
    if (t < n_tiles) load_kv(t);
    cp_async_commit();
  }

  const int wg_row0 = q0 + wg * 64, wrow0 = wg_row0 + wq * 16, r0 = wrow0 + (lane >> 2);

  // D = rowsum(dO ∘ O) for this warp's 16 rows, two lanes a row, from global memory.
  float d_mine;
  {
    const int t = wrow0 + (lane >> 1);
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
          acc = fmaf(xf.x, yf.x, fmaf(xf.y, yf.y, acc));
        }
      }
    }
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    d_mine = acc;
    if (t < T && (lane & 1) == 0) dvec[(int64_t(b) * H + h) * T + t] = acc;
  }
  const float drow[2] = {__shfl_sync(0xffffffffu, d_mine, 2 * (lane >> 2)),
                         __shfl_sync(0xffffffffu, d_mine, 2 * ((lane >> 2) + 8))};
  const float* lp = lse + (int64_t(b) * H + h) * T;
  const float lrow[2] = {r0 < T ? lp[r0] * kLog2e : 0.f, r0 + 8 < T ? lp[r0 + 8] * kLog2e : 0.f};

  // Pipeline, per warpgroup, iteration j (as in the forward):
  //   wait for dS_{j-2}·K_{j-2};  issue S_j, dP_j (one group), then dQ += dS_{j-1}·K_{j-1};
  //   wait for S_j, dP_j only;  dS_j → dS buffer j % 2 (published by the next top's barrier).
  float dqa[HD / 2];
#pragma unroll
  for (int i = 0; i < HD / 2; ++i) dqa[i] = 0.f;
  float s[BC / 2], dp[BC / 2];
#pragma unroll
  for (int i = 0; i < BC / 2; ++i) s[i] = dp[i] = 0.f;

  auto top = [&](int j) {
    cp_async_wait<NS - 4>();
    fence_proxy_async();
    __syncthreads();
    if (j + NS - 3 < n_tiles) load_kv(j + NS - 3);
    cp_async_commit();
  };
  auto issue = [&](int j, bool with_s, bool with_dq) {
    fence_regs(s);
    fence_regs(dp);
    fence_regs(dqa);
    wgmma_fence();
    if (with_s) {
      const bf16* cK = sK + (j % NS) * BC * HD;
      const bf16* cV = sV + (j % NS) * BC * HD;
#pragma unroll
      for (int ks = 0; ks < HD / 16; ++ks)
        WgmmaSS<BC>::run(s, desc_kmajor<HD>(sQ, wg * 64, ks), desc_kmajor<HD>(cK, 0, ks), ks > 0);
#pragma unroll
      for (int ks = 0; ks < HD / 16; ++ks)
        WgmmaSS<BC>::run(dp, desc_kmajor<HD>(sdO, wg * 64, ks), desc_kmajor<HD>(cV, 0, ks), ks > 0);
      wgmma_commit();
    }
    if (with_dq) {
      const bf16* cdS = sdS + ((j - 1) & 1) * kBr * BC;
      const bf16* cK = sK + ((j - 1) % NS) * BC * HD;
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk)
        WgmmaSS<HD, 1>::run(dqa, desc_kmajor<BC>(cdS, wg * 64, kk), desc_mnmajor<HD>(cK, kk), 1);
      wgmma_commit();
    }
    fence_regs(s);
    fence_regs(dp);
    fence_regs(dqa);
  };
  auto make_ds = [&](int j) {  // P = exp2(S·scale·log2e − lse·log2e), 0 where masked; dS = P∘(dP − D)
    const int c0 = j * BC;
    const bool need_mask = c0 + BC - 1 > wrow0 || c0 + BC > T;
#pragma unroll
    for (int nt = 0; nt < BC / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = c0 + nt * 8 + (lane & 3) * 2 + (e & 1);
        const int row = r0 + (e >> 1) * 8;
        float p = fast_exp2(fmaf(s[4 * nt + e], scale_log2, -lrow[e >> 1]));
        if (need_mask && (col > row || col >= T)) p = 0.f;
        s[4 * nt + e] = p * (dp[4 * nt + e] - drow[e >> 1]);
      }
    store_acc_cm<BC>(sdS + (j & 1) * kBr * BC, wg * 64 + wq * 16, s, lane);
  };

  top(0);
  issue(0, true, false);
  wgmma_wait<0>();
  fence_regs(s);
  fence_regs(dp);
  make_ds(0);
  for (int j = 1; j < n_tiles; ++j) {
    top(j);
    wgmma_wait<0>();  // dS_{j-2}·K_{j-2} done: dS buffer j % 2 is free
    fence_regs(dqa);
    issue(j, true, true);
    wgmma_wait<1>();  // S_j, dP_j done
    fence_regs(s);
    fence_regs(dp);
    make_ds(j);
  }
  wgmma_wait<0>();
  fence_regs(dqa);
  fence_proxy_async();  // publish the last dS
  __syncthreads();
  issue(n_tiles, false, true);
  wgmma_wait<0>();
  fence_regs(dqa);

  bf16* sO = sQ + wg * 64 * HD;
  const int lr = wq * 16 + (lane >> 2);
#pragma unroll
  for (int dt = 0; dt < HD / 8; ++dt) {
    const int col = dt * 8 + (lane & 3) * 2;
    *reinterpret_cast<uint32_t*>(sO + cm_offset<HD>(lr, col)) = pack_bf16(dqa[4 * dt] * scale, dqa[4 * dt + 1] * scale);
    *reinterpret_cast<uint32_t*>(sO + cm_offset<HD>(lr + 8, col)) =
        pack_bf16(dqa[4 * dt + 2] * scale, dqa[4 * dt + 3] * scale);
  }
  __syncwarp();
  constexpr int kChunks = HD / 8;
  bf16* dqp = dq + (int64_t(b) * H + h) * T * HD;
  for (int c = lane; c < 16 * kChunks; c += 32) {
    const int r8 = c & 7, rest = c >> 3;
    const int ch = rest % kChunks, rr = wq * 16 + (rest / kChunks) * 8 + r8;
    const int t = wg_row0 + rr;
    if (t < T)
      *reinterpret_cast<uint4*>(dqp + int64_t(t) * HD + ch * 8) =
          *reinterpret_cast<const uint4*>(sO + cm_offset<HD>(rr, ch * 8));
  }
#endif
}

// ------------------------------------------------------------------------------------------
template <int HD, int NWG, int BR, int NS>
struct Sm90DkdvTile {
  static constexpr int kBc = 64 * NWG, kBr = BR, kThreads = 128 * NWG;  // NWG warpgroups × 64 keys; BR queries a step
  static constexpr int kStages = NS;  // step j's Q, dO are read in steps j and j+1; NS-3 steps in flight
  static_assert(NS >= 4, "step j-3's stage is the one refilled in step j");
  static constexpr size_t kSmemBf16 =  // K, V; NS stages of Q, dO; 2 buffers each of Pᵀ, dSᵀ
      (size_t(2 * kBc + 2 * kStages * kBr) * HD + size_t(4) * kBc * kBr) * sizeof(bf16);
  static constexpr size_t kSmem = kSmemBf16 + 2 * kStages * kBr * sizeof(float);  // lse, D
  static_assert(kSmem <= 227 * 1024, "shared memory per block");
};

template <int HD, int NWG, int BR, int NS>
__global__ void __launch_bounds__(NWG * 128, 1)
    attention_bwd_dkdv_sm90_kernel(float* __restrict__ dk, float* __restrict__ dv, const bf16* __restrict__ dout,
                                   const bf16* __restrict__ q, const bf16* __restrict__ k,
                                   const bf16* __restrict__ v, const float* __restrict__ lse,
                                   const float* __restrict__ dvec, int B, int T, int H, int group,
                                   DkdvSplit split, float scale_log2, float scale) {
#ifdef MLKV_SM90A
  using Tile = Sm90DkdvTile<HD, NWG, BR, NS>;
  constexpr int kBc = Tile::kBc, kBr = Tile::kBr, kNT = Tile::kThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sK = reinterpret_cast<bf16*>(smem_raw);  // [kBc × HD]
  bf16* sV = sK + kBc * HD;                      // [kBc × HD]
  constexpr int kS = Tile::kStages;
  bf16* sQ = sV + kBc * HD;                      // [kS][kBr × HD]
  bf16* sdO = sQ + kS * kBr * HD;                // [kS][kBr × HD]
  bf16* sPt = sdO + kS * kBr * HD;               // [2][kBc × kBr]  Pᵀ
  bf16* sdSt = sPt + 2 * kBc * kBr;              // [2][kBc × kBr]  dSᵀ
  float* sL = reinterpret_cast<float*>(smem_raw + Tile::kSmemBf16);  // [kS][kBr]
  float* sD = sL + kS * kBr;                                         // [kS][kBr]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, wq = warp & 3;
  const int KVH = H / group;
  const DkdvBlock blk = dkdv_block(split, B, KVH);
  const int jt = blk.jt, g = blk.g, b = blk.b;
  const int h0 = g * group + blk.slice * split.heads_per;  // first query head of this block
  const int kv0 = jt * kBc;
  const int64_t row_stride = int64_t(H) * HD;
  const int n_q = (T + kBr - 1) / kBr;
  const int q_first = kv0 / kBr;
  const int per_head = n_q - q_first;
  const int n_steps = split.heads_per * per_head;

  const TileLoader<kBr, HD, kNT> q_loader(tid);
  auto load_step = [&](int step) {  // step's Q, dO, lse, D into stage step % kS
    const int stage = step % kS;
    const int h = h0 + step / per_head, qi = q_first + step % per_head;
    const int qr0 = qi * kBr;
    q_loader.load(sQ + stage * kBr * HD, q + (int64_t(b) * H + h) * T * HD, HD, qr0, T, tid);
    q_loader.load(sdO + stage * kBr * HD, dout + int64_t(b) * T * row_stride + h * HD, row_stride, qr0, T, tid);
    const int64_t vec0 = (int64_t(b) * H + h) * T;
    load_vec_async<kBr, kNT>(sL + stage * kBr, lse + vec0, qr0, T, tid);
    load_vec_async<kBr, kNT>(sD + stage * kBr, dvec + vec0, qr0, T, tid);
  };

  const int64_t kvbase = (int64_t(b) * KVH + g) * T * HD;
  {
    const TileLoader<kBc, HD, kNT> kv_loader(tid);
    kv_loader.load(sK, k + kvbase, HD, kv0, T, tid);
    kv_loader.load(sV, v + kvbase, HD, kv0, T, tid);
  }
  load_step(0);
  cp_async_commit();
#pragma unroll
  for (int t = 1; t <= kS - 4; ++t) {
    if (t < n_steps) load_step(t);
    cp_async_commit();
  }

  const int wg_key0 = kv0 + wg * 64;
  const int key_r = wg_key0 + wq * 16 + (lane >> 2);  // this thread's keys: key_r, key_r + 8

  // Pipeline, per warpgroup, step j (as in the forward):
  //   wait for step j-2's products;  issue Sᵀ_j, dPᵀ_j (one group), then dV += Pᵀ_{j-1}·dO_{j-1},
  //   dK += dSᵀ_{j-1}·Q_{j-1};  wait for Sᵀ_j, dPᵀ_j only;  Pᵀ_j, dSᵀ_j → buffers j % 2.
  // Step t's data (stage t % kS) is read in steps t and t+1 and free after the wait at the top
  // of step t+2; so after the barrier of step j, step j-3's stage takes step j+kS-3.
  // A warpgroup whose keys all follow a query tile runs it anyway (fully masked, P = 0): no
  // wgmma sits under a branch.
  float dva[HD / 2], dka[HD / 2];
#pragma unroll
  for (int i = 0; i < HD / 2; ++i) dva[i] = dka[i] = 0.f;
  float s[kBr / 2], dp[kBr / 2];
#pragma unroll
  for (int i = 0; i < kBr / 2; ++i) s[i] = dp[i] = 0.f;

  auto top = [&](int step) {
    cp_async_wait<kS - 4>();
    fence_proxy_async();
    __syncthreads();
    if (step + kS - 3 < n_steps) load_step(step + kS - 3);
    cp_async_commit();
  };
  auto issue = [&](int step, bool with_s, bool with_dkdv) {
    fence_regs(s);
    fence_regs(dp);
    fence_regs(dva);
    fence_regs(dka);
    wgmma_fence();
    if (with_s) {
      const bf16* cQ = sQ + (step % kS) * kBr * HD;
      const bf16* cdO = sdO + (step % kS) * kBr * HD;
#pragma unroll
      for (int ks = 0; ks < HD / 16; ++ks)
        WgmmaSS<kBr>::run(s, desc_kmajor<HD>(sK, wg * 64, ks), desc_kmajor<HD>(cQ, 0, ks), ks > 0);
#pragma unroll
      for (int ks = 0; ks < HD / 16; ++ks)
        WgmmaSS<kBr>::run(dp, desc_kmajor<HD>(sV, wg * 64, ks), desc_kmajor<HD>(cdO, 0, ks), ks > 0);
      wgmma_commit();
    }
    if (with_dkdv) {
      const bf16* pQ = sQ + ((step - 1) % kS) * kBr * HD;
      const bf16* pdO = sdO + ((step - 1) % kS) * kBr * HD;
      const bf16* pP = sPt + ((step - 1) & 1) * kBc * kBr;
      const bf16* pdS = sdSt + ((step - 1) & 1) * kBc * kBr;
#pragma unroll
      for (int kk = 0; kk < kBr / 16; ++kk)
        WgmmaSS<HD, 1>::run(dva, desc_kmajor<kBr>(pP, wg * 64, kk), desc_mnmajor<HD>(pdO, kk), 1);
#pragma unroll
      for (int kk = 0; kk < kBr / 16; ++kk)
        WgmmaSS<HD, 1>::run(dka, desc_kmajor<kBr>(pdS, wg * 64, kk), desc_mnmajor<HD>(pQ, kk), 1);
      wgmma_commit();
    }
    fence_regs(s);
    fence_regs(dp);
    fence_regs(dva);
    fence_regs(dka);
  };
  // Pᵀ (keys × queries) = exp2(Sᵀ·scale·log2e − lse·log2e), 0 where query < key or ≥ T;
  // dSᵀ = Pᵀ ∘ (dPᵀ − D); both to their shared-memory buffers as bf16.
  auto make_p_ds = [&](int step) {
    const float* cL = sL + (step % kS) * kBr;
    const float* cD = sD + (step % kS) * kBr;
    const int qr0 = (q_first + step % per_head) * kBr;
#pragma unroll
    for (int nt = 0; nt < kBr / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qc = nt * 8 + (lane & 3) * 2 + (e & 1), qg = qr0 + qc, key = key_r + (e >> 1) * 8;
        float p = fast_exp2(fmaf(s[4 * nt + e], scale_log2, -cL[qc] * kLog2e));
        if (qg < key || qg >= T) p = 0.f;
        s[4 * nt + e] = p;
        dp[4 * nt + e] = p * (dp[4 * nt + e] - cD[qc]);
      }
    store_acc_cm<kBr>(sPt + (step & 1) * kBc * kBr, wg * 64 + wq * 16, s, lane);
    store_acc_cm<kBr>(sdSt + (step & 1) * kBc * kBr, wg * 64 + wq * 16, dp, lane);
  };

  top(0);
  issue(0, true, false);
  wgmma_wait<0>();
  fence_regs(s);
  fence_regs(dp);
  make_p_ds(0);
  for (int step = 1; step < n_steps; ++step) {
    top(step);
    wgmma_wait<0>();  // step-2's products done: its Pᵀ, dSᵀ buffers are free
    fence_regs(dva);
    fence_regs(dka);
    issue(step, true, true);
    wgmma_wait<1>();  // Sᵀ, dPᵀ of this step done
    fence_regs(s);
    fence_regs(dp);
    make_p_ds(step);
  }
  wgmma_wait<0>();
  fence_regs(dva);
  fence_regs(dka);
  fence_proxy_async();  // publish the last Pᵀ, dSᵀ
  __syncthreads();
  issue(n_steps, false, true);
  wgmma_wait<0>();
  fence_regs(dva);
  fence_regs(dka);

  // Slice 0 adds into the caller's sums; slice s > 0 writes partial s-1 (add_dkdv_partials).
  const DkdvOut dst(dk, dv, split, blk.slice, int64_t(B) * KVH * T * HD);
  add_dkdv_acc<HD>(dst, kvbase, key_r, T, lane, dka, dva, scale);
#endif
}

template <int HD, int NWG, int BC, int NS>
void launch_dq_sm90(void* dq, float* dvec, const void* dout, const void* q, const void* k, const void* v,
                    const void* out, const float* lse, int B, int T, int H, int KVH, cudaStream_t stream) {
  using Tile = Sm90DqTile<HD, NWG, BC, NS>;
  auto kernel = attention_bwd_dq_sm90_kernel<HD, NWG, BC, NS>;
  allow_smem(kernel, Tile::kSmem);
  const float scale = 1.f / std::sqrt(float(HD));
  const dim3 grid((T + Tile::kBr - 1) / Tile::kBr, H, B);
  kernel<<<grid, Tile::kThreads, Tile::kSmem, stream>>>(
      static_cast<bf16*>(dq), dvec, static_cast<const bf16*>(dout), static_cast<const bf16*>(q),
      static_cast<const bf16*>(k), static_cast<const bf16*>(v), static_cast<const bf16*>(out), lse, T, H, H / KVH,
      scale * kLog2e, scale);
  check_launch("attention_bwd_dq_sm90_kernel");
}

// The dK/dV tile of each head dim, read by the launch and by backward_dkdv_sm90_key_tile. Shared
// memory (K, V + NS stages of Q, dO, lse, D + Pᵀ, dSᵀ buffers): 145, 170, 194 KB. Three
// warpgroups (192 keys) with 32 queries a step beat two with 64 at hd 64/80 by 2-7 % (log 9); at
// hd 128 three need more than the 168 registers a thread can then have.
template <int HD>
struct DkdvShape {
  static constexpr int kNwg = HD <= 80 ? 3 : 2, kBr = 32, kNs = 6;
  using Tile = Sm90DkdvTile<HD, kNwg, kBr, kNs>;
};

template <int HD>
void launch_dkdv_sm90(float* dk, float* dv, const void* dout, const void* q, const void* k, const void* v,
                      const float* lse, const float* dvec, int B, int T, int H, int KVH, const DkdvSplit& split,
                      cudaStream_t stream) {
  using S = DkdvShape<HD>;
  using Tile = typename S::Tile;
  auto kernel = attention_bwd_dkdv_sm90_kernel<HD, S::kNwg, S::kBr, S::kNs>;
  allow_smem(kernel, Tile::kSmem);
  const float scale = 1.f / std::sqrt(float(HD));
  const int64_t blocks = int64_t((T + Tile::kBc - 1) / Tile::kBc) * KVH * B * split.split;
  kernel<<<dim3(unsigned(blocks)), Tile::kThreads, Tile::kSmem, stream>>>(
      dk, dv, static_cast<const bf16*>(dout), static_cast<const bf16*>(q), static_cast<const bf16*>(k),
      static_cast<const bf16*>(v), lse, dvec, B, T, H, H / KVH, split, scale * kLog2e, scale);
  check_launch("attention_bwd_dkdv_sm90_kernel");
}

}  // namespace

void backward_dq_sm90(void* dq, float* dvec, const void* dout, const void* q, const void* k, const void* v,
                      const void* out, const float* lse, int B, int T, int H, int KVH, int hd, cudaStream_t stream) {
  switch (hd) {
    // Shared memory: Q, dO + NS stages of K, V + 2 dS buffers = 160, 188, 184, 200 KB. Three
    // warpgroups (192 query rows) a block: faster than two and than four (log 9).
    case 64: launch_dq_sm90<64, 3, 64, 4>(dq, dvec, dout, q, k, v, out, lse, B, T, H, KVH, stream); break;
    case 80: launch_dq_sm90<80, 3, 64, 4>(dq, dvec, dout, q, k, v, out, lse, B, T, H, KVH, stream); break;
    case 128: launch_dq_sm90<128, 3, 32, 4>(dq, dvec, dout, q, k, v, out, lse, B, T, H, KVH, stream); break;
    case 256: launch_dq_sm90<256, 1, 32, 4>(dq, dvec, dout, q, k, v, out, lse, B, T, H, KVH, stream); break;
  }
}

bool backward_dkdv_sm90_supports(int hd) { return hd <= 128; }
int backward_dkdv_sm90_key_tile(int hd) {
  switch (hd) {
    case 64: return DkdvShape<64>::Tile::kBc;
    case 80: return DkdvShape<80>::Tile::kBc;
    default: return DkdvShape<128>::Tile::kBc;
  }
}

void backward_dkdv_sm90(float* dk, float* dv, const void* dout, const void* q, const void* k, const void* v,
                        const float* lse, const float* dvec, int B, int T, int H, int KVH, int hd,
                        const DkdvSplit& split, cudaStream_t stream) {
  switch (hd) {
    case 64: launch_dkdv_sm90<64>(dk, dv, dout, q, k, v, lse, dvec, B, T, H, KVH, split, stream); break;
    case 80: launch_dkdv_sm90<80>(dk, dv, dout, q, k, v, lse, dvec, B, T, H, KVH, split, stream); break;
    case 128: launch_dkdv_sm90<128>(dk, dv, dout, q, k, v, lse, dvec, B, T, H, KVH, split, stream); break;
    default: throw Error("attention_backward: no sm90 dK/dV kernel for head dim " + std::to_string(hd));
  }
}

}  // namespace mlkv::cuda::attn
