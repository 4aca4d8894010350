// MLKV flash-attention backward on Hopper tensor cores (wgmma, sm_90a); the same two-kernel,
// atomic-free scheme as attention_backward.cu (read its header), with warpgroup tiles:
//
//  dq kernel, per warpgroup 64 query rows of one (b, h), per K/V tile of BC keys:
//    S = Q·Kᵀ, dP = dO·Vᵀ        wgmma, A and B from shared memory (K-major)
//    P, dS = P∘(dP − D)          registers
//    dQ += dS·K                  wgmma, A = dS from registers, B = K (MN-major)
//  dK/dV kernel, per warpgroup 64 keys of one (b, kv head), 2 warpgroups a block; per query head
//  of the group and per query tile of 64 rows at or below the diagonal:
//    Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ      wgmma, A = K / V tile, B = Q / dO tile (K-major)
//    Pᵀ, dSᵀ                     registers
//    dV += Pᵀ·dO, dK += dSᵀ·Q    wgmma, A from registers, B = dO / Q (MN-major)
//  then plain read-add-write of the fp32 sums into dk, dv (rows owned by this block only).
#include <cmath>

#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/attention_sm90.cuh"
#include "kernels/cuda/attention_sm90.h"

namespace mlkv::cuda::attn {
namespace {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MLKV_SM90A 1
#endif

// Accumulator tile (16 rows per warp, n8 tiles in registers) → bf16 A fragments, k16 at a time.
template <int N>
__device__ __forceinline__ void acc_to_frags(uint32_t (&a)[N / 16][4], const float (&c)[N / 2]) {
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk) {
    a[kk][0] = pack_bf16(c[8 * kk + 0], c[8 * kk + 1]);
    a[kk][1] = pack_bf16(c[8 * kk + 2], c[8 * kk + 3]);
    a[kk][2] = pack_bf16(c[8 * kk + 4], c[8 * kk + 5]);
    a[kk][3] = pack_bf16(c[8 * kk + 6], c[8 * kk + 7]);
  }
}

// ------------------------------------------------------------------------------------------
template <int HD, int NWG, int BC>
struct Sm90DqTile {
  static constexpr int kBr = 64 * NWG;
  static constexpr int kThreads = 128 * NWG;
  static constexpr size_t kSmem = size_t(2 * kBr + 4 * BC) * HD * sizeof(bf16);  // Q, dO, 2 stages K, V
};

template <int HD, int NWG, int BC>
__global__ void __launch_bounds__(NWG * 128, 1)
    attention_bwd_dq_sm90_kernel(bf16* __restrict__ dq, float* __restrict__ dvec, const bf16* __restrict__ dout,
                                 const bf16* __restrict__ q, const bf16* __restrict__ k,
                                 const bf16* __restrict__ v, const bf16* __restrict__ out,
                                 const float* __restrict__ lse, int T, int H, int group, float scale_log2,
                                 float scale) {
#ifdef MLKV_SM90A
  using Tile = Sm90DqTile<HD, NWG, BC>;
  constexpr int kBr = Tile::kBr, kNT = Tile::kThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* sdO = sQ + kBr * HD;
  bf16* sK = sdO + kBr * HD;  // [2][BC × HD]
  bf16* sV = sK + 2 * BC * HD;

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

  load_tile_cm_async<kBr, HD, kNT>(sQ, qp, HD, q0, T, tid);
  load_tile_cm_async<kBr, HD, kNT>(sdO, dop, row_stride, q0, T, tid);
  load_tile_cm_async<BC, HD, kNT>(sK, kp, HD, 0, T, tid);
  load_tile_cm_async<BC, HD, kNT>(sV, vp, HD, 0, T, tid);
  cp_async_commit();

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

  float dqa[HD / 2];
#pragma unroll
  for (int i = 0; i < HD / 2; ++i) dqa[i] = 0.f;
  float s[BC / 2], dp[BC / 2];
#pragma unroll
  for (int i = 0; i < BC / 2; ++i) s[i] = dp[i] = 0.f;

  for (int j = 0; j < n_tiles; ++j) {
    const int st = j & 1;
    if (j + 1 < n_tiles) {
      load_tile_cm_async<BC, HD, kNT>(sK + (st ^ 1) * BC * HD, kp, HD, (j + 1) * BC, T, tid);
      load_tile_cm_async<BC, HD, kNT>(sV + (st ^ 1) * BC * HD, vp, HD, (j + 1) * BC, T, tid);
    }
    cp_async_commit();
    cp_async_wait<1>();
    fence_proxy_async();
    __syncthreads();
    const bf16* cK = sK + st * BC * HD;
    const bf16* cV = sV + st * BC * HD;
    const int c0 = j * BC;
    if (c0 > wg_row0 + 63) {
      __syncthreads();
      continue;
    }

    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < HD / 16; ++ks)
      WgmmaSS<BC>::run(s, desc_kmajor<HD>(sQ, wg * 64, ks), desc_kmajor<HD>(cK, 0, ks), ks > 0);
#pragma unroll
    for (int ks = 0; ks < HD / 16; ++ks)
      WgmmaSS<BC>::run(dp, desc_kmajor<HD>(sdO, wg * 64, ks), desc_kmajor<HD>(cV, 0, ks), ks > 0);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(s);
    fence_regs(dp);

    const bool need_mask = c0 + BC - 1 > wrow0 || c0 + BC > T;
#pragma unroll
    for (int nt = 0; nt < BC / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = c0 + nt * 8 + (lane & 3) * 2 + (e & 1);
        const int row = r0 + (e >> 1) * 8;
        float p = exp2f(fmaf(s[4 * nt + e], scale_log2, -lrow[e >> 1]));
        if (need_mask && (col > row || col >= T)) p = 0.f;
        s[4 * nt + e] = p * (dp[4 * nt + e] - drow[e >> 1]);
      }
    uint32_t da[BC / 16][4];
    acc_to_frags<BC>(da, s);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) WgmmaRS<HD, 1>::run(dqa, da[kk], desc_mnmajor<HD>(cK, kk), 1);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(dqa);
    __syncthreads();
  }

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
template <int HD>
struct Sm90DkdvTile {
  static constexpr int kBc = 128, kBr = 64, kThreads = 256;  // 2 warpgroups × 64 keys
  static constexpr size_t kSmemBf16 = size_t(2 * kBc + 4 * kBr) * HD * sizeof(bf16);  // K, V; 2 stages Q, dO
  static constexpr size_t kSmem = kSmemBf16 + 4 * kBr * sizeof(float);               // 2 stages lse, D
};

template <int HD>
__global__ void __launch_bounds__(256, 1)
    attention_bwd_dkdv_sm90_kernel(float* __restrict__ dk, float* __restrict__ dv, const bf16* __restrict__ dout,
                                   const bf16* __restrict__ q, const bf16* __restrict__ k,
                                   const bf16* __restrict__ v, const float* __restrict__ lse,
                                   const float* __restrict__ dvec, int T, int H, int group, float scale_log2,
                                   float scale) {
#ifdef MLKV_SM90A
  using Tile = Sm90DkdvTile<HD>;
  constexpr int kBc = Tile::kBc, kBr = Tile::kBr, kNT = Tile::kThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sK = reinterpret_cast<bf16*>(smem_raw);  // [kBc × HD]
  bf16* sV = sK + kBc * HD;                      // [kBc × HD]
  bf16* sQ = sV + kBc * HD;                      // [2][kBr × HD]
  bf16* sdO = sQ + 2 * kBr * HD;                 // [2][kBr × HD]
  float* sL = reinterpret_cast<float*>(smem_raw + Tile::kSmemBf16);  // [2][kBr]
  float* sD = sL + 2 * kBr;                                          // [2][kBr]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, wq = warp & 3;
  const int jt = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
  const int KVH = gridDim.y;
  const int kv0 = jt * kBc;
  const int64_t row_stride = int64_t(H) * HD;
  const int n_q = (T + kBr - 1) / kBr;
  const int q_first = kv0 / kBr;
  const int per_head = n_q - q_first;
  const int n_steps = group * per_head;

  auto load_step = [&](int step, int stage) {
    const int hh = step / per_head, qi = q_first + step % per_head;
    const int h = g * group + hh;
    const int qr0 = qi * kBr;
    load_tile_cm_async<kBr, HD, kNT>(sQ + stage * kBr * HD, q + (int64_t(b) * H + h) * T * HD, HD, qr0, T, tid);
    load_tile_cm_async<kBr, HD, kNT>(sdO + stage * kBr * HD, dout + int64_t(b) * T * row_stride + h * HD,
                                     row_stride, qr0, T, tid);
    const int64_t vec0 = (int64_t(b) * H + h) * T;
    load_vec_async<kBr, kNT>(sL + stage * kBr, lse + vec0, qr0, T, tid);
    load_vec_async<kBr, kNT>(sD + stage * kBr, dvec + vec0, qr0, T, tid);
  };

  const int64_t kvbase = (int64_t(b) * KVH + g) * T * HD;
  load_tile_cm_async<kBc, HD, kNT>(sK, k + kvbase, HD, kv0, T, tid);
  load_tile_cm_async<kBc, HD, kNT>(sV, v + kvbase, HD, kv0, T, tid);
  load_step(0, 0);
  cp_async_commit();

  const int wg_key0 = kv0 + wg * 64;
  const int key_r = wg_key0 + wq * 16 + (lane >> 2);  // this thread's keys: key_r, key_r + 8

  float dva[HD / 2], dka[HD / 2];
#pragma unroll
  for (int i = 0; i < HD / 2; ++i) dva[i] = dka[i] = 0.f;
  float s[kBr / 2], dp[kBr / 2];
#pragma unroll
  for (int i = 0; i < kBr / 2; ++i) s[i] = dp[i] = 0.f;

  for (int step = 0; step < n_steps; ++step) {
    const int st = step & 1;
    if (step + 1 < n_steps) load_step(step + 1, st ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    fence_proxy_async();
    __syncthreads();
    const bf16* cQ = sQ + st * kBr * HD;
    const bf16* cdO = sdO + st * kBr * HD;
    const float* cL = sL + st * kBr;
    const float* cD = sD + st * kBr;
    const int qr0 = (q_first + step % per_head) * kBr;
    if (qr0 + kBr - 1 < wg_key0) {  // every query of the tile precedes this warpgroup's keys
      __syncthreads();
      continue;
    }

    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < HD / 16; ++ks)
      WgmmaSS<kBr>::run(s, desc_kmajor<HD>(sK, wg * 64, ks), desc_kmajor<HD>(cQ, 0, ks), ks > 0);
#pragma unroll
    for (int ks = 0; ks < HD / 16; ++ks)
      WgmmaSS<kBr>::run(dp, desc_kmajor<HD>(sV, wg * 64, ks), desc_kmajor<HD>(cdO, 0, ks), ks > 0);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(s);
    fence_regs(dp);

    // Pᵀ (keys × queries) = exp2(Sᵀ·scale·log2e − lse·log2e), 0 where query < key or ≥ T;
    // dSᵀ = Pᵀ ∘ (dPᵀ − D). Pᵀ stays in s, dSᵀ goes to dp.
#pragma unroll
    for (int nt = 0; nt < kBr / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qc = nt * 8 + (lane & 3) * 2 + (e & 1), qg = qr0 + qc, key = key_r + (e >> 1) * 8;
        float p = exp2f(fmaf(s[4 * nt + e], scale_log2, -cL[qc] * kLog2e));
        if (qg < key || qg >= T) p = 0.f;
        s[4 * nt + e] = p;
        dp[4 * nt + e] = p * (dp[4 * nt + e] - cD[qc]);
      }
    uint32_t pa[kBr / 16][4], da[kBr / 16][4];
    acc_to_frags<kBr>(pa, s);
    acc_to_frags<kBr>(da, dp);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBr / 16; ++kk) WgmmaRS<HD, 1>::run(dva, pa[kk], desc_mnmajor<HD>(cdO, kk), 1);
#pragma unroll
    for (int kk = 0; kk < kBr / 16; ++kk) WgmmaRS<HD, 1>::run(dka, da[kk], desc_mnmajor<HD>(cQ, kk), 1);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(dva);
    fence_regs(dka);
    __syncthreads();
  }

#pragma unroll
  for (int dt = 0; dt < HD / 8; ++dt) {
    const int col = dt * 8 + (lane & 3) * 2;
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int key = key_r + hr * 8;
      if (key >= T) continue;
      float2* pk = reinterpret_cast<float2*>(dk + kvbase + int64_t(key) * HD + col);
      float2* pv = reinterpret_cast<float2*>(dv + kvbase + int64_t(key) * HD + col);
      float2 xk = *pk, xv = *pv;
      xk.x += dka[4 * dt + 2 * hr] * scale;
      xk.y += dka[4 * dt + 2 * hr + 1] * scale;
      xv.x += dva[4 * dt + 2 * hr];
      xv.y += dva[4 * dt + 2 * hr + 1];
      *pk = xk;
      *pv = xv;
    }
  }
#endif
}

template <int HD, int NWG, int BC>
void launch_dq_sm90(void* dq, float* dvec, const void* dout, const void* q, const void* k, const void* v,
                    const void* out, const float* lse, int B, int T, int H, int KVH, cudaStream_t stream) {
  using Tile = Sm90DqTile<HD, NWG, BC>;
  auto kernel = attention_bwd_dq_sm90_kernel<HD, NWG, BC>;
  allow_smem(kernel, Tile::kSmem);
  const float scale = 1.f / std::sqrt(float(HD));
  const dim3 grid((T + Tile::kBr - 1) / Tile::kBr, H, B);
  kernel<<<grid, Tile::kThreads, Tile::kSmem, stream>>>(
      static_cast<bf16*>(dq), dvec, static_cast<const bf16*>(dout), static_cast<const bf16*>(q),
      static_cast<const bf16*>(k), static_cast<const bf16*>(v), static_cast<const bf16*>(out), lse, T, H, H / KVH,
      scale * kLog2e, scale);
  check_launch("attention_bwd_dq_sm90_kernel");
}

template <int HD>
void launch_dkdv_sm90(float* dk, float* dv, const void* dout, const void* q, const void* k, const void* v,
                      const float* lse, const float* dvec, int B, int T, int H, int KVH, cudaStream_t stream) {
  using Tile = Sm90DkdvTile<HD>;
  auto kernel = attention_bwd_dkdv_sm90_kernel<HD>;
  allow_smem(kernel, Tile::kSmem);
  const float scale = 1.f / std::sqrt(float(HD));
  const dim3 grid((T + Tile::kBc - 1) / Tile::kBc, KVH, B);
  kernel<<<grid, Tile::kThreads, Tile::kSmem, stream>>>(dk, dv, static_cast<const bf16*>(dout),
                                                        static_cast<const bf16*>(q), static_cast<const bf16*>(k),
                                                        static_cast<const bf16*>(v), lse, dvec, T, H, H / KVH,
                                                        scale * kLog2e, scale);
  check_launch("attention_bwd_dkdv_sm90_kernel");
}

}  // namespace

void backward_dq_sm90(void* dq, float* dvec, const void* dout, const void* q, const void* k, const void* v,
                      const void* out, const float* lse, int B, int T, int H, int KVH, int hd, cudaStream_t stream) {
  switch (hd) {
    case 64: launch_dq_sm90<64, 2, 64>(dq, dvec, dout, q, k, v, out, lse, B, T, H, KVH, stream); break;
    case 80: launch_dq_sm90<80, 2, 64>(dq, dvec, dout, q, k, v, out, lse, B, T, H, KVH, stream); break;
    case 128: launch_dq_sm90<128, 2, 64>(dq, dvec, dout, q, k, v, out, lse, B, T, H, KVH, stream); break;
    case 256: launch_dq_sm90<256, 1, 64>(dq, dvec, dout, q, k, v, out, lse, B, T, H, KVH, stream); break;
  }
}

bool backward_dkdv_sm90_supports(int hd) { return hd <= 128; }

void backward_dkdv_sm90(float* dk, float* dv, const void* dout, const void* q, const void* k, const void* v,
                        const float* lse, const float* dvec, int B, int T, int H, int KVH, int hd,
                        cudaStream_t stream) {
  switch (hd) {
    case 64: launch_dkdv_sm90<64>(dk, dv, dout, q, k, v, lse, dvec, B, T, H, KVH, stream); break;
    case 80: launch_dkdv_sm90<80>(dk, dv, dout, q, k, v, lse, dvec, B, T, H, KVH, stream); break;
    case 128: launch_dkdv_sm90<128>(dk, dv, dout, q, k, v, lse, dvec, B, T, H, KVH, stream); break;
    default: throw Error("attention_backward: no sm90 dK/dV kernel for head dim " + std::to_string(hd));
  }
}

}  // namespace mlkv::cuda::attn
