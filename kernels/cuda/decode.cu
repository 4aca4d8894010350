// Decoding ops over the KV cache (core/backend.h "decoding"): cache k/v[B, KVH, C, hd] bf16.
//
// decode_attention is flash-decoding for MLKV: one thread block per (sequence b, KV head g, context
// split). It streams that head's keys and values once, in tiles of kTile positions, for ALL the
// G = H/KVH query heads that read it (the group's queries are packed into one [G, hd] tile in
// shared memory), so a KV head is read from memory once per layer no matter how many query heads
// share it. Small batches split the context so that the chip fills; each split writes its
// unnormalised partial (o, running max m, sum l), and a second kernel combines the splits in
// split order: deterministic, no atomics. bf16 in, fp32 accumulate; scores in the log2 domain.
//   per tile: load K, V (16-byte loads; keys past the sequence's end are zero) → [rotate K by its
//   positions, rot_k > 0] → S[G, tile] = Q·Kᵀ (a thread per key) → online softmax per head (a warp
//   per head) → O[G, hd] += P·V (a thread per 8 output dims; tiles with few outputs split keys).
// decode_mma_kernel is the default where it applies (G ≤ 16, hd 64/128/256, shared-rope keys;
// ATTENTION_NOTES.md "Decode attention"): both products on tensor cores, a cp.async ring of K/V
// tiles, the 4 warps splitting each tile's keys and merging once at the end; same partials, same
// combine kernel. It streams 3.5-4.2 TB/s where the SIMT kernel below reaches 0.5-1.7 (H200,
// 2026-12-03). MLKV_DECODE_MMA=0 runs the SIMT kernel everywhere (A/B, and its tests).
#include <algorithm>
#include <cfloat>
#include <cstdlib>
#include <string>

#include "core/env.h"
#include "core/errors.h"
#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/backend_ops.cuh"

namespace mlkv::cuda {

namespace {

constexpr int kThreads = 128, kTile = 64, kMaxItems = 4;  // phase C: G·hd/8 ≤ kThreads·kMaxItems
constexpr float kLog2e = 1.4426950408889634f;

__global__ void cache_store_kernel(bf16* kc, bf16* vc, const bf16* k, const bf16* v, int KVH, int T, int C, int hd,
                                   int64_t vectors) {
  const int per_row = hd / 8;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < vectors; i += int64_t{gridDim.x} * blockDim.x) {
    const int c = static_cast<int>(i % per_row);
    const int64_t row = i / per_row;  // (b·KVH + g)·T + t
    const int t = static_cast<int>(row % T);
    const int64_t bg = row / T, dst = (bg * C + t) * hd + c * 8, src = row * hd + c * 8;
    *reinterpret_cast<Bf16x8*>(kc + dst) = *reinterpret_cast<const Bf16x8*>(k + src);
    *reinterpret_cast<Bf16x8*>(vc + dst) = *reinterpret_cast<const Bf16x8*>(v + src);
  }
}

// One block per sequence: its row of qkv, rotated at pos[b]; elements of [rot/2, rot) are
// written by their partner at −rot/2.
__global__ void rope_append_kernel(bf16* q, bf16* kc, bf16* vc, const bf16* qkv, const int32_t* pos, int H, int KVH,
                                   int hd, int C, int rot, float base, bool rotate_k) {
  extern __shared__ float2 cs[];
  const int b = blockIdx.x, t = pos[b], half = rot / 2, slots = H + 2 * KVH;
  for (int i = threadIdx.x; i < half; i += blockDim.x) rope_angle(t, i, rot, base, cs[i].x, cs[i].y);
  __syncthreads();
  const bf16* row = qkv + int64_t{b} * slots * hd;
  for (int idx = threadIdx.x; idx < slots * hd; idx += blockDim.x) {
    const int j = idx / hd, e = idx - j * hd;
    bf16* dst;
    bool rotary = true;
    if (j < H) {
      dst = q + (int64_t{b} * H + j) * hd;
    } else if (j < H + KVH) {
      dst = kc + ((int64_t{b} * KVH + (j - H)) * C + t) * hd;
      rotary = rotate_k;
    } else {
      dst = vc + ((int64_t{b} * KVH + (j - H - KVH)) * C + t) * hd;
      rotary = false;
    }
    const bf16* src = row + j * hd;
    if (rotary && e < rot) {
      if (e >= half) continue;
      const float x0 = __bfloat162float(src[e]), x1 = __bfloat162float(src[e + half]);
      dst[e] = __float2bfloat16(x0 * cs[e].x - x1 * cs[e].y);
      dst[e + half] = __float2bfloat16(x1 * cs[e].x + x0 * cs[e].y);
    } else {
      dst[e] = src[e];
    }
  }
}

// Shared memory of one decode block: K and V tiles (rows padded by 8 bf16 so that the 16-byte
// reads of one key per thread fall into distinct banks), Q [G, hd] fp32, S [G, kTile], and per
// head the running max m, sum l and this tile's rescale alpha; red for the key-split sums.
struct DecodeSmem {
  int G, hd, ksplit, n_out;
  __host__ __device__ int row() const { return hd + 8; }
  __host__ __device__ size_t kv_bytes() const { return size_t(kTile) * row() * 2; }
  size_t bytes() const {
    return 2 * kv_bytes() + size_t(G) * hd * 4 + size_t(G) * kTile * 4 + 3 * size_t(G) * 4 +
           (ksplit > 1 ? size_t(kThreads) * 8 * 4 : 0);
  }
};

__global__ void __launch_bounds__(kThreads) decode_kernel(bf16* out, float* part_o, float* part_ml, const bf16* q,
                                                          const bf16* kc, const bf16* vc, const int32_t* pos, int H,
                                                          int KVH, int hd, int C, int span, int splits, int rot_k,
                                                          float base, DecodeSmem L) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int b = blockIdx.x, g = blockIdx.y, split = blockIdx.z, G = L.G, tid = threadIdx.x, R = L.row();
  const int nkeys = pos[b] + 1, k0 = split * span, k1 = min(k0 + span, nkeys);
  bf16* Ks = reinterpret_cast<bf16*>(smem);
  bf16* Vs = reinterpret_cast<bf16*>(smem + L.kv_bytes());
  float* Qs = reinterpret_cast<float*>(smem + 2 * L.kv_bytes());
  float* S = Qs + G * hd;
  float *m = S + G * kTile, *l = m + G, *alpha = l + G;
  float* red = alpha + G;
  const int h0 = g * G;  // the group's first query head
  const int64_t out_row = int64_t{b} * H + h0;

  if (k0 >= nkeys) {  // this split lies past the sequence: an empty partial
    if (tid < G) {
      part_ml[((out_row + tid) * splits + split) * 2] = -INFINITY;
      part_ml[((out_row + tid) * splits + split) * 2 + 1] = 0;
    }
    for (int i = tid; i < G * hd; i += kThreads) part_o[((out_row + i / hd) * splits + split) * hd + i % hd] = 0;
    return;
  }
  const float qscale = rsqrtf(static_cast<float>(hd)) * kLog2e;
  for (int i = tid; i < G * hd; i += kThreads) Qs[i] = __bfloat162float(q[out_row * hd + i]) * qscale;
  if (tid < G) m[tid] = -INFINITY, l[tid] = 0;

  const int chunks = hd / 8;
  const int ksplit = L.ksplit, n_out = L.n_out, r = tid / n_out;  // phase C: key residue r
  float acc[kMaxItems][8];
#pragma unroll
  for (int it = 0; it < kMaxItems; ++it)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[it][e] = 0;

  const bf16* kb = kc + (int64_t{b} * KVH + g) * C * hd;
  const bf16* vb = vc + (int64_t{b} * KVH + g) * C * hd;
  for (int t0 = k0; t0 < k1; t0 += kTile) {
    __syncthreads();  // the previous tile is consumed (and Qs, m, l are initialised)
    for (int i = tid; i < kTile * chunks; i += kThreads) {
      const int s = i / chunks, c = i - s * chunks;
      Bf16x8 kv{}, vv{};
      if (t0 + s < k1) {
        kv = *reinterpret_cast<const Bf16x8*>(kb + int64_t(t0 + s) * hd + c * 8);
        vv = *reinterpret_cast<const Bf16x8*>(vb + int64_t(t0 + s) * hd + c * 8);
      }
      *reinterpret_cast<Bf16x8*>(Ks + s * R + c * 8) = kv;
      *reinterpret_cast<Bf16x8*>(Vs + s * R + c * 8) = vv;
    }
    __syncthreads();
    if (rot_k > 0) {  // the owner's rotated K, from the un-rotated cache (paper mode)
      const int half = rot_k / 2;
      for (int i = tid; i < kTile * half; i += kThreads) {
        const int s = i / half, e = i - s * half;
        float c, sn;
        rope_angle(t0 + s, e, rot_k, base, c, sn);
        const float x0 = __bfloat162float(Ks[s * R + e]), x1 = __bfloat162float(Ks[s * R + e + half]);
        Ks[s * R + e] = __float2bfloat16(x0 * c - x1 * sn);
        Ks[s * R + e + half] = __float2bfloat16(x1 * c + x0 * sn);
      }
      __syncthreads();
    }
    // S = Q·Kᵀ: thread → key s = tid % kTile, heads hh, hh + 2, ... (hh = tid / kTile)
    {
      const int s = tid % kTile, hh = tid / kTile;
      const bool live = t0 + s < k1;
      for (int hb = hh; hb < G; hb += 2 * 8) {
        float dot[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int c = 0; c < chunks; ++c) {
          float kf[8];
          load8(Ks + s * R + c * 8, kf);
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            const int h = hb + 2 * j;
            if (h < G) {
              const float4 qa = *reinterpret_cast<const float4*>(Qs + h * hd + c * 8);
              const float4 qb = *reinterpret_cast<const float4*>(Qs + h * hd + c * 8 + 4);
              dot[j] += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] + qb.y * kf[5] +
                        qb.z * kf[6] + qb.w * kf[7];
            }
          }
        }
#pragma unroll
        for (int j = 0; j < 8; ++j)
          if (hb + 2 * j < G) S[(hb + 2 * j) * kTile + s] = live ? dot[j] : -INFINITY;
      }
    }
    __syncthreads();
    // online softmax, a warp per head
    for (int h = tid / 32; h < G; h += kThreads / 32) {
      const int lane = tid % 32;
      const float a = S[h * kTile + lane], c = S[h * kTile + lane + 32];
      const float m_new = fmaxf(m[h], warp_max(fmaxf(a, c)));  // finite: key t0 is live
      const float pa = exp2f(a - m_new), pc = exp2f(c - m_new);
      S[h * kTile + lane] = pa;
      S[h * kTile + lane + 32] = pc;
      const float sum = warp_sum(pa + pc);
      __syncwarp();
      if (lane == 0) {
        const float al = exp2f(m[h] - m_new);
        alpha[h] = al;
        l[h] = l[h] * al + sum;
        m[h] = m_new;
      }
    }
    __syncthreads();
    // O += P·V
    if (r < ksplit) {
#pragma unroll
      for (int it = 0; it < kMaxItems; ++it) {
        const int item = (tid % n_out) + it * kThreads;
        if (ksplit > 1 ? it > 0 : item >= n_out) break;
        const int h = item / chunks, c = item - h * chunks;
        const float al = alpha[h];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[it][e] *= al;
        for (int s = r; s < kTile; s += ksplit) {
          const float pr = S[h * kTile + s];
          float vf[8];
          load8(Vs + s * R + c * 8, vf);
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[it][e] += pr * vf[e];
        }
      }
    }
  }
  __syncthreads();
  if (ksplit > 1) {  // sum the key residues in order 0, 1, ...
    if (r < ksplit)
#pragma unroll
      for (int e = 0; e < 8; ++e) red[tid * 8 + e] = acc[0][e];
    __syncthreads();
    if (tid < n_out)
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        float v = 0;
        for (int rr = 0; rr < ksplit; ++rr) v += red[(rr * n_out + tid) * 8 + e];
        acc[0][e] = v;
      }
  }
  const bool writer = ksplit > 1 ? tid < n_out : true;
  if (!writer) return;
#pragma unroll
  for (int it = 0; it < kMaxItems; ++it) {
    const int item = tid + it * kThreads;
    if (item >= n_out || (ksplit > 1 && it > 0)) break;
    const int h = item / chunks, c = item - h * chunks;
    if (splits == 1) {
      float o[8];
      const float inv = 1.0f / l[h];
#pragma unroll
      for (int e = 0; e < 8; ++e) o[e] = acc[it][e] * inv;
      store8(out + (out_row + h) * hd + c * 8, o);
    } else {
      float* po = part_o + ((out_row + h) * splits + split) * hd + c * 8;
#pragma unroll
      for (int e = 0; e < 8; ++e) po[e] = acc[it][e];
    }
  }
  if (splits > 1 && tid < G) {
    part_ml[((out_row + tid) * splits + split) * 2] = m[tid];
    part_ml[((out_row + tid) * splits + split) * 2 + 1] = l[tid];
  }
}

// The tensor-core decode: a block per (split, KV head g, sequence b) as above, 4 warps. The group's
// G ≤ 16 query heads are the 16 rows of an mma.m16n8k16 tile (rows ≥ G zero); every 64-key tile of
// K and V arrives through an NS-stage cp.async ring (tile i+NS-1 is issued while tile i is used);
// warp w takes keys 16w..16w+15 of each tile: S[16×16] = Q·Kᵀ, its own online softmax (m, l per
// row, in the 4 lanes that hold the row), O[16×HD] += P·V with P repacked from S's registers. The
// warps' (m, l, O) merge at the end in warp order (deterministic) into the output, or into this
// split's partial for combine_kernel. Fragment layouts: attention_tile.cuh.
template <int HD, int NS>
struct DecodeMma {
  static constexpr int kLd = HD + 8, kKeys = 64, kWarps = 4;
  static constexpr size_t stage_elems = size_t(2) * kKeys * kLd;  // K then V
  static constexpr size_t smem_bytes() { return (size_t(16) * kLd + NS * stage_elems) * 2; }
  static_assert(size_t(kWarps) * 16 * (HD + 2) * 4 <= NS * stage_elems * 2, "the merge reuses the K/V stages");
};

template <int HD, int NS>
__global__ void __launch_bounds__(128) decode_mma_kernel(bf16* out, float* part_o, float* part_ml, const bf16* q,
                                                          const bf16* kc, const bf16* vc, const int32_t* pos, int H,
                                                          int KVH, int C, int span, int splits, int G) {
  namespace A = attn;
  using D = DecodeMma<HD, NS>;
  constexpr int LD = D::kLd, KT = D::kKeys, NT = 128, NN = HD / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Qs = reinterpret_cast<bf16*>(smem);
  bf16* stages = Qs + 16 * LD;
  const int b = blockIdx.x, g = blockIdx.y, split = blockIdx.z, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int nkeys = pos[b] + 1, k0 = split * span, k1 = min(k0 + span, nkeys);
  const int64_t out_row = int64_t{b} * H + int64_t{g} * G;
  if (k0 >= nkeys) {  // this split lies past the sequence: an empty partial
    if (tid < G) {
      part_ml[((out_row + tid) * splits + split) * 2] = -INFINITY;
      part_ml[((out_row + tid) * splits + split) * 2 + 1] = 0;
    }
    for (int i = tid; i < G * HD; i += NT) part_o[((out_row + i / HD) * splits + split) * HD + i % HD] = 0;
    return;
  }
  for (int c = tid; c < 16 * (HD / 8); c += NT) {  // Q [16, HD]: the group's rows, zeros below
    const int r = c / (HD / 8), ch = c % (HD / 8);
    A::cp_async16(Qs + r * LD + ch * 8, q + (out_row + (r < G ? r : 0)) * HD + ch * 8, r < G);
  }
  const bf16* kb = kc + (int64_t{b} * KVH + g) * C * HD;
  const bf16* vb = vc + (int64_t{b} * KVH + g) * C * HD;
  const int ntiles = (k1 - k0 + KT - 1) / KT;
  const auto issue = [&](int i) {  // one commit group per tile, empty past the end: uniform waits
    if (i < ntiles) {
      bf16* Ks = stages + (i % NS) * D::stage_elems;
      const int t0 = k0 + i * KT;
      A::load_tile_async<KT, HD, NT>(Ks, kb + int64_t{t0} * HD, HD, 0, k1 - t0, tid);
      A::load_tile_async<KT, HD, NT>(Ks + KT * LD, vb + int64_t{t0} * HD, HD, 0, k1 - t0, tid);
    }
    A::cp_async_commit();
  };
#pragma unroll
  for (int i = 0; i < NS - 1; ++i) issue(i);  // group 0 also carries Q

  const float scale = rsqrtf(static_cast<float>(HD)) * kLog2e;
  float o[NN][4];
#pragma unroll
  for (int n = 0; n < NN; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0;
  float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0, 0};  // rows lane/4 and lane/4 + 8
  const int kw = warp * 16;
  for (int i = 0; i < ntiles; ++i) {
    A::cp_async_wait<NS - 2>();  // tile i has landed (this thread's copies) ...
    __syncthreads();             // ... everyone's, and tile i-1's stage is free for tile i+NS-1
    issue(i + NS - 1);
    const bf16* Ks = stages + (i % NS) * D::stage_elems;
    const bf16* Vs = Ks + KT * LD;
    float s_lo[4] = {0, 0, 0, 0}, s_hi[4] = {0, 0, 0, 0};  // keys kw+0..7, kw+8..15
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
      uint32_t a[4], kf[4];
      A::load_a(a, Qs, LD, 0, kk * 16, lane);
      A::load_b_nk(kf, Ks, LD, kw, kk * 16, lane);
      A::mma_bf16(s_lo, a, kf[0], kf[1]);
      A::mma_bf16(s_hi, a, kf[2], kf[3]);
    }
    // this thread's scores: row r (lane/4 + 8r), keys key0 + {0, 1, 8, 9}
    const int key0 = k0 + i * KT + kw + 2 * (lane % 4);
    float sv[2][4] = {{s_lo[0], s_lo[1], s_hi[0], s_hi[1]}, {s_lo[2], s_lo[3], s_hi[2], s_hi[3]}};
    constexpr int kOff[4] = {0, 1, 8, 9};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        sv[r][j] = key0 + kOff[j] < k1 ? sv[r][j] * scale : -INFINITY;
        mx = fmaxf(mx, sv[r][j]);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_r[r], mx);
      const bool none = m_new == -INFINITY;  // no live key for this warp yet: keep zeros, no NaN
      const float alpha = none ? 1.0f : exp2f(m_r[r] - m_new);
      float sum = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) sum += (sv[r][j] = none ? 0.0f : exp2f(sv[r][j] - m_new));
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      l_r[r] = l_r[r] * alpha + sum;
      m_r[r] = m_new;
#pragma unroll
      for (int n = 0; n < NN; ++n) o[n][2 * r] *= alpha, o[n][2 * r + 1] *= alpha;
    }
    uint32_t p[4];
    const float p_lo[4] = {sv[0][0], sv[0][1], sv[1][0], sv[1][1]}, p_hi[4] = {sv[0][2], sv[0][3], sv[1][2], sv[1][3]};
    A::acc_to_a(p, p_lo, p_hi);
#pragma unroll
    for (int n = 0; n < HD / 16; ++n) {
      uint32_t vf[4];
      A::load_b_kn(vf, Vs, LD, kw, n * 16, lane);
      A::mma_bf16(o[2 * n], p, vf[0], vf[1]);
      A::mma_bf16(o[2 * n + 1], p, vf[2], vf[3]);
    }
  }
  A::cp_async_wait<0>();
  __syncthreads();  // every warp is done with the stages: they now hold the warps' partials
  float* Om = reinterpret_cast<float*>(stages);  // [warp][16][HD]
  float* Ml = Om + D::kWarps * 16 * HD;           // [warp][16][m, l]
  const int r0 = lane / 4, c0 = 2 * (lane % 4);
#pragma unroll
  for (int n = 0; n < NN; ++n)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float* dst = Om + (warp * 16 + r0 + 8 * r) * HD + n * 8 + c0;
      dst[0] = o[n][2 * r];
      dst[1] = o[n][2 * r + 1];
    }
  if (lane % 4 == 0)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      Ml[(warp * 16 + r0 + 8 * r) * 2] = m_r[r];
      Ml[(warp * 16 + r0 + 8 * r) * 2 + 1] = l_r[r];
    }
  __syncthreads();
  for (int idx = tid; idx < G * HD; idx += NT) {
    const int h = idx / HD, e = idx - h * HD;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < D::kWarps; ++w) M = fmaxf(M, Ml[(w * 16 + h) * 2]);  // finite: warp 0 saw key k0
    float num = 0, den = 0;
#pragma unroll
    for (int w = 0; w < D::kWarps; ++w) {
      const float mw = Ml[(w * 16 + h) * 2];
      const float f = mw == -INFINITY ? 0.0f : exp2f(mw - M);
      num += Om[(w * 16 + h) * HD + e] * f;
      den += Ml[(w * 16 + h) * 2 + 1] * f;
    }
    if (splits == 1) {
      out[(out_row + h) * HD + e] = __float2bfloat16(num / den);
    } else {
      part_o[((out_row + h) * splits + split) * HD + e] = num;
      if (e == 0) {
        part_ml[((out_row + h) * splits + split) * 2] = M;
        part_ml[((out_row + h) * splits + split) * 2 + 1] = den;
      }
    }
  }
}

// out[b, h, :] = Σ_i o_i·2^(m_i − M) / Σ_i l_i·2^(m_i − M), splits i in order; a block per (b, h).
__global__ void combine_kernel(bf16* out, const float* part_o, const float* part_ml, int splits, int hd) {
  const int64_t bh = blockIdx.x;
  const float* ml = part_ml + bh * splits * 2;
  float M = -INFINITY;
  for (int i = 0; i < splits; ++i) M = fmaxf(M, ml[2 * i]);
  for (int e = threadIdx.x; e < hd; e += blockDim.x) {
    float num = 0, den = 0;
    for (int i = 0; i < splits; ++i) {
      const float w = exp2f(ml[2 * i] - M);
      num += part_o[(bh * splits + i) * hd + e] * w;
      den += ml[2 * i + 1] * w;
    }
    out[bh * hd + e] = __float2bfloat16(num / den);
  }
}

// Row argmax, the lowest index among ties (NaN never wins); a block per row.
__global__ void argmax_kernel(int32_t* ids, const bf16* logits, int64_t V) {
  const bf16* row = logits + blockIdx.x * V;
  float best = -INFINITY;
  int64_t arg = V;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float x = __bfloat162float(row[j]);
    if (x > best || (arg == V && x == best)) best = x, arg = j;
  }
  __shared__ float sv[32];
  __shared__ int64_t si[32];
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, arg, o);
    if (ov > best || (ov == best && oi < arg)) best = ov, arg = oi;
  }
  if (threadIdx.x % 32 == 0) sv[threadIdx.x / 32] = best, si[threadIdx.x / 32] = arg;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w)
      if (sv[w] > best || (sv[w] == best && si[w] < arg)) best = sv[w], arg = si[w];
    ids[blockIdx.x] = static_cast<int32_t>(arg < V ? arg : 0);
  }
}

template <int HD, int NS>
void launch_decode_mma(dim3 grid, cudaStream_t s, bf16* out, float* part_o, float* part_ml, const bf16* q,
                       const bf16* kc, const bf16* vc, const int32_t* pos, int H, int KVH, int C, int span, int splits,
                       int G) {
  constexpr size_t smem = DecodeMma<HD, NS>::smem_bytes();
  static const bool opted = [] {
    MLKV_CUDA_CHECK(cudaFuncSetAttribute(decode_mma_kernel<HD, NS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         int(smem)));
    return true;
  }();
  (void)opted;
  decode_mma_kernel<HD, NS><<<grid, 128, smem, s>>>(out, part_o, part_ml, q, kc, vc, pos, H, KVH, C, span, splits, G);
}

// The tensor-core kernel where it applies, unless MLKV_DECODE_MMA=0 (read once per process).
bool decode_mma_enabled() {
  static const bool on = env_switch("MLKV_DECODE_MMA") != 0;
  return on;
}

int sm_count() {
  static int n = [] {
    int dev = 0, c = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&c, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      c = 132;
    return c;
  }();
  return n;
}

}  // namespace

void kv_cache_store(bf16* k_cache, bf16* v_cache, const bf16* k, const bf16* v, int B, int KVH, int T, int C, int hd,
                    cudaStream_t s) {
  if (hd % 8 != 0) throw Error("kv_cache_store: head dim " + std::to_string(hd) + " is not a multiple of 8");
  const int64_t vectors = int64_t{B} * KVH * T * (hd / 8);
  if (vectors == 0) return;
  cache_store_kernel<<<grid_for(vectors, 256), 256, 0, s>>>(k_cache, v_cache, k, v, KVH, T, C, hd, vectors);
  MLKV_LAUNCH_CHECK();
}

void qkv_rope_append(bf16* q, bf16* k_cache, bf16* v_cache, const bf16* qkv, const int32_t* pos, int B, int H,
                     int KVH, int hd, int C, int rot, float base, bool rotate_k, cudaStream_t s) {
  if (rot < 0 || rot > hd || rot % 2 != 0)
    throw Error("qkv_rope_append: rotary dims " + std::to_string(rot) + " must be even and <= head dim");
  if (B == 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(512, ceil_div(int64_t{H + 2 * KVH} * hd, 32) * 32));
  rope_append_kernel<<<B, threads, sizeof(float2) * std::max(1, rot / 2), s>>>(q, k_cache, v_cache, qkv, pos, H, KVH,
                                                                              hd, C, rot, base, rotate_k);
  MLKV_LAUNCH_CHECK();
}

int decode_attention_splits(int B, int KVH, int C) {
  const int64_t units = int64_t{B} * KVH, want = 4 * int64_t{sm_count()};
  if (units >= want) return 1;
  return static_cast<int>(std::min<int64_t>(ceil_div(want, units), ceil_div(C, kTile)));
}

void decode_attention(bf16* out, const bf16* q, const bf16* k_cache, const bf16* v_cache, const int32_t* pos, int B,
                      int H, int KVH, int hd, int C, int rot_k, float base, Scratch& scratch, cudaStream_t s) {
  if (B == 0) return;
  const int G = H / KVH, chunks = hd / 8;
  if (hd % 8 != 0 || hd > 256 || G * KVH != H || G * chunks > kThreads * kMaxItems)
    throw Error("decode_attention: head dim " + std::to_string(hd) + " with " + std::to_string(G) +
                " query heads per KV head is not supported (hd % 8 == 0, hd <= 256, G·hd <= 4096)");
  DecodeSmem L{G, hd, 1, G * chunks};
  if (L.n_out <= kThreads / 2) {
    L.ksplit = 1;
    while (L.ksplit * 2 * L.n_out <= kThreads) L.ksplit *= 2;
  }
  const int splits = decode_attention_splits(B, KVH, C);
  const int span = static_cast<int>(ceil_div(ceil_div(C, splits), kTile) * kTile);
  float *part_o = nullptr, *part_ml = nullptr;
  if (splits > 1) {
    const int64_t rows = int64_t{B} * H * splits;
    part_o = static_cast<float*>(scratch.get(static_cast<size_t>(rows) * (hd + 2) * sizeof(float)));
    part_ml = part_o + rows * hd;
  }
  const dim3 grid(B, KVH, splits);  // B on x: up to 2^31 - 1 sequences (y and z stop at 65535)
  const bool mma = decode_mma_enabled() && rot_k == 0 && G <= 16 && (hd == 64 || hd == 128 || hd == 256);
  if (mma && hd == 64) {
    launch_decode_mma<64, 3>(grid, s, out, part_o, part_ml, q, k_cache, v_cache, pos, H, KVH, C, span, splits, G);
  } else if (mma && hd == 128) {
    launch_decode_mma<128, 3>(grid, s, out, part_o, part_ml, q, k_cache, v_cache, pos, H, KVH, C, span, splits, G);
  } else if (mma) {  // hd 256: two stages of 64 keys (68 KB each)
    launch_decode_mma<256, 2>(grid, s, out, part_o, part_ml, q, k_cache, v_cache, pos, H, KVH, C, span, splits, G);
  } else {
    const size_t smem = L.bytes();
    static size_t opted = 48 << 10;
    if (smem > opted) {
      MLKV_CUDA_CHECK(cudaFuncSetAttribute(decode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      opted = smem;
    }
    decode_kernel<<<grid, kThreads, smem, s>>>(out, part_o, part_ml, q, k_cache, v_cache, pos, H, KVH, hd, C, span,
                                               splits, rot_k, base, L);
  }
  MLKV_LAUNCH_CHECK();
  if (splits > 1) {
    combine_kernel<<<static_cast<unsigned>(int64_t{B} * H), std::min(256, hd), 0, s>>>(out, part_o, part_ml, splits, hd);
    MLKV_LAUNCH_CHECK();
  }
}

void argmax_rows(int32_t* ids, const bf16* logits, int64_t N, int64_t V, cudaStream_t s) {
  if (N == 0) return;
  argmax_kernel<<<static_cast<unsigned>(N), 256, 0, s>>>(ids, logits, V);
  MLKV_LAUNCH_CHECK();
}

}  // namespace mlkv::cuda
