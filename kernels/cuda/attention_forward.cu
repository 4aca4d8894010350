// MLKV flash-attention forward: out[B, T, H·hd] = softmax(causal(q·kᵀ / sqrt(hd))) · v and
// lse[B, H, T] (natural log), with q[B, H, T, hd] and k, v[B, KVH, T, hd] in bf16; query head h
// reads KV head h / (H / KVH) straight from the shared buffer (no repeat of KV heads).
//
// One thread block owns BR = 16·NW query rows of one (b, h); each warp owns 16 rows and keeps
// their output accumulator (16 × hd fp32) and online-softmax state in registers. K/V tiles of BC
// keys stream through shared memory, two stages deep (cp.async), so no T×T matrix exists.
// Scores are kept in log2 units (scale·log2 e folded in) so each probability costs one exp2.
#include <cmath>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/attention_sm90.h"
#include "kernels/cuda/attention_tile.cuh"

namespace mlkv::cuda {
namespace attn {
namespace {

template <int HD, int NW, int BC>
struct FwdTile {
  static constexpr int kBr = 16 * NW;  // query rows per block
  static constexpr int kLd = HD + 8;   // padded smem row (elements)
  static constexpr int kThreads = NW * 32;
  static constexpr size_t kSmem = size_t(kBr + 4 * BC) * kLd * sizeof(bf16);  // Q + 2 stages of K, V
  static_assert(HD % 16 == 0 && BC % 16 == 0, "tiles are multiples of the MMA shape");
};

template <int HD, int NW, int BC>
__global__ void __launch_bounds__(NW * 32) attention_fwd_kernel(bf16* __restrict__ out, float* __restrict__ lse,
                                                                const bf16* __restrict__ q,
                                                                const bf16* __restrict__ k,
                                                                const bf16* __restrict__ v, int T, int H,
                                                                int group, float scale_log2) {
  using Tile = FwdTile<HD, NW, BC>;
  constexpr int kLd = Tile::kLd, kBr = Tile::kBr, kNT = Tile::kThreads;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);  // [kBr][kLd]
  bf16* sK = sQ + kBr * kLd;                     // [2][BC][kLd]
  bf16* sV = sK + 2 * BC * kLd;                  // [2][BC][kLd]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int qt = gridDim.x - 1 - blockIdx.x;  // causal: the last query tiles do the most work; start them first
  const int h = blockIdx.y, b = blockIdx.z;
  const int KVH = H / group, g = h / group;
  const int q0 = qt * kBr;
  const bf16* qp = q + (int64_t(b) * H + h) * T * HD;
  const bf16* kp = k + (int64_t(b) * KVH + g) * T * HD;
  const bf16* vp = v + (int64_t(b) * KVH + g) * T * HD;

  const int kv_end = min(q0 + kBr, T);  // keys [0, kv_end) are visible to some row of the tile
  const int n_tiles = (kv_end + BC - 1) / BC;

  load_tile_async<kBr, HD, kNT>(sQ, qp, HD, q0, T, tid);
  load_tile_async<BC, HD, kNT>(sK, kp, HD, 0, T, tid);
  load_tile_async<BC, HD, kNT>(sV, vp, HD, 0, T, tid);
  cp_async_commit();

  float o[HD / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY};  // running max (log2 units) of rows r0 and r0 + 8
  float l[2] = {0.f, 0.f};              // this thread's partial row sums
  const int wrow0 = q0 + warp * 16;     // first row of this warp
  const int r0 = wrow0 + (lane >> 2);   // this thread's rows: r0, r0 + 8

  for (int j = 0; j < n_tiles; ++j) {
    const int st = j & 1;
    if (j + 1 < n_tiles) {
      load_tile_async<BC, HD, kNT>(sK + (st ^ 1) * BC * kLd, kp, HD, (j + 1) * BC, T, tid);
      load_tile_async<BC, HD, kNT>(sV + (st ^ 1) * BC * kLd, vp, HD, (j + 1) * BC, T, tid);
    }
    cp_async_commit();  // possibly empty: keeps "all groups but the newest" = tile j
    cp_async_wait<1>();
    __syncthreads();
    const bf16* cK = sK + st * BC * kLd;
    const bf16* cV = sV + st * BC * kLd;
    const int c0 = j * BC;
    if (c0 > wrow0 + 15) {  // the whole tile lies above this warp's rows (diagonal, BR > BC)
      __syncthreads();
      continue;
    }

    // S (16 × BC per warp) = Q · Kᵀ
    float s[BC / 8][4] = {};
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
      uint32_t a[4];
      load_a(a, sQ, kLd, warp * 16, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < BC / 16; ++np) {
        uint32_t bb[4];
        load_b_nk(bb, cK, kLd, np * 16, kk * 16, lane);
        mma_bf16(s[2 * np], a, bb[0], bb[1]);
        mma_bf16(s[2 * np + 1], a, bb[2], bb[3]);
      }
    }

    // Causal and tail mask, only on tiles that reach past this warp's first row or past T.
    if (c0 + BC - 1 > wrow0 || c0 + BC > T) {
#pragma unroll
      for (int nt = 0; nt < BC / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = c0 + nt * 8 + (lane & 3) * 2 + (e & 1);
          const int row = r0 + (e >> 1) * 8;
          if (col > row || col >= T) s[nt][e] = -INFINITY;
        }
    }

    // Online softmax: rescale the running output by exp2(m_old − m_new).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < BC / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[r], mx * scale_log2);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing visible yet
      const float alpha = fast_exp2(m[r] - m_use);
      m[r] = m_new;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < BC / 8; ++nt) {
        s[nt][2 * r] = fast_exp2(fmaf(s[nt][2 * r], scale_log2, -m_use));
        s[nt][2 * r + 1] = fast_exp2(fmaf(s[nt][2 * r + 1], scale_log2, -m_use));
        sum += s[nt][2 * r] + s[nt][2 * r + 1];
      }
      l[r] = l[r] * alpha + sum;
#pragma unroll
      for (int dt = 0; dt < HD / 8; ++dt) {
        o[dt][2 * r] *= alpha;
        o[dt][2 * r + 1] *= alpha;
      }
    }

    // O += P · V, P taken from the score registers as bf16 A fragments.
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      uint32_t a[4];
      acc_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < HD / 16; ++dp) {
        uint32_t bb[4];
        load_b_kn(bb, cV, kLd, kk * 16, dp * 16, lane);
        mma_bf16(o[2 * dp], a, bb[0], bb[1]);
        mma_bf16(o[2 * dp + 1], a, bb[2], bb[3]);
      }
    }
    __syncthreads();  // the next iteration refills this stage
  }

  // Epilogue: normalise, stage this warp's 16 rows in its own (no longer read) rows of sQ, then
  // write 16-byte chunks into out[b, t, h·hd + d].
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  const float inv0 = 1.f / l[0], inv1 = 1.f / l[1];
  bf16* sO = sQ + warp * 16 * kLd;
#pragma unroll
  for (int dt = 0; dt < HD / 8; ++dt) {
    const int col = dt * 8 + (lane & 3) * 2;
    *reinterpret_cast<uint32_t*>(sO + (lane >> 2) * kLd + col) = pack_bf16(o[dt][0] * inv0, o[dt][1] * inv0);
    *reinterpret_cast<uint32_t*>(sO + ((lane >> 2) + 8) * kLd + col) = pack_bf16(o[dt][2] * inv1, o[dt][3] * inv1);
  }
  __syncwarp();
  constexpr int kChunks = HD / 8;
  for (int c = lane; c < 16 * kChunks; c += 32) {
    const int r = c / kChunks, ch = c % kChunks;
    const int t = wrow0 + r;
    if (t < T)
      *reinterpret_cast<uint4*>(out + (int64_t(b) * T + t) * H * HD + h * HD + ch * 8) =
          *reinterpret_cast<const uint4*>(sO + r * kLd + ch * 8);
  }
  if ((lane & 3) == 0) {
    float* lp = lse + (int64_t(b) * H + h) * T;
    if (r0 < T) lp[r0] = (m[0] + log2f(l[0])) * kLn2;
    if (r0 + 8 < T) lp[r0 + 8] = (m[1] + log2f(l[1])) * kLn2;
  }
}

template <int HD, int NW, int BC>
void launch_fwd(void* out, float* lse, const void* q, const void* k, const void* v, int B, int T, int H, int KVH,
                cudaStream_t stream) {
  using Tile = FwdTile<HD, NW, BC>;
  auto kernel = attention_fwd_kernel<HD, NW, BC>;
  allow_smem(kernel, Tile::kSmem);
  const dim3 grid((T + Tile::kBr - 1) / Tile::kBr, H, B);
  const float scale_log2 = kLog2e / std::sqrt(float(HD));
  kernel<<<grid, Tile::kThreads, Tile::kSmem, stream>>>(static_cast<bf16*>(out), lse, static_cast<const bf16*>(q),
                                                        static_cast<const bf16*>(k), static_cast<const bf16*>(v), T,
                                                        H, H / KVH, scale_log2);
  check_launch("attention_fwd_kernel");
}

}  // namespace
}  // namespace attn

bool attention_supports_head_dim(int hd) { return hd == 64 || hd == 80 || hd == 128 || hd == 256; }

void attention_forward(void* out, float* lse, const void* q, const void* k, const void* v, int B, int T, int H,
                       int KVH, int hd, cudaStream_t stream) {
  attn::check_shape("attention_forward", B, T, H, KVH, hd);
  if (!attn::aligned16(out) || !attn::aligned16(q) || !attn::aligned16(k) || !attn::aligned16(v))
    throw Error("attention_forward: q, k, v and out must be 16-byte aligned");
  if (attn::sm90_enabled()) return attn::forward_sm90(out, lse, q, k, v, B, T, H, KVH, hd, stream);
  switch (hd) {
    case 64: attn::launch_fwd<64, 8, 64>(out, lse, q, k, v, B, T, H, KVH, stream); break;
    case 80: attn::launch_fwd<80, 8, 64>(out, lse, q, k, v, B, T, H, KVH, stream); break;
    case 128: attn::launch_fwd<128, 8, 64>(out, lse, q, k, v, B, T, H, KVH, stream); break;
    case 256: attn::launch_fwd<256, 4, 32>(out, lse, q, k, v, B, T, H, KVH, stream); break;
  }
}

}  // namespace mlkv::cuda
