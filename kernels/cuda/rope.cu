// Rotary position embedding (DESIGN §2: first `rot` dims, rotate_half layout, base^(-2i/rot)):
//   split forward:  qkv[B·T, (H + 2·KVH)·hd] (rows: all q heads | all k heads | all v heads)
//                   → q[B, H, T, hd] rotated, k[B, KVH, T, hd] rotated when rotate_k, v[B, KVH, T, hd]
//   split backward: dqkv[B·T, (H + 2·KVH)·hd] = rope⁻¹(dq) | rope⁻¹(dk) | dv   (dk, dv fp32 group sums)
//   rope forward:   out[BH, T, hd] = rope(x);   rope backward: dx[BH, T, hd] (fp32) += rope⁻¹(dout fp32)
// For the pair (x0, x1) = (x[i], x[i + rot/2]) at position t with angle a = t·base^(-2i/rot):
//   forward  (x0·cos a − x1·sin a, x1·cos a + x0·sin a);  inverse (g0·cos a + g1·sin a, g1·cos a − g0·sin a).
// The split ops run one block per token row: its rot/2 angles are computed once into shared
// memory (sincosf is the costly part; per element it made these copies 4x slower than memory),
// and all index arithmetic stays 32-bit within the row. Each thread moves VEC consecutive
// elements of one head; a chunk in [0, rot/2) also carries its partner chunk at +rot/2, a chunk in
// [rot/2, rot) is left to that partner, the rest is copied.
#include <algorithm>
#include <string>
#include <type_traits>

#include "core/errors.h"
#include "kernels/cuda/backend_ops.cuh"

namespace mlkv::cuda {

namespace {

template <int VEC>
__device__ __forceinline__ void ld(const bf16* p, float (&f)[VEC]) {
  if constexpr (VEC == 8) {
    load8(p, f);
  } else if constexpr (VEC == 2) {
    const float2 t = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
    f[0] = t.x;
    f[1] = t.y;
  } else {
    f[0] = __bfloat162float(*p);
  }
}
template <int VEC>
__device__ __forceinline__ void ld(const float* p, float (&f)[VEC]) {
  if constexpr (VEC % 4 == 0) {
#pragma unroll
    for (int k = 0; k < VEC; k += 4) {
      const float4 t = *reinterpret_cast<const float4*>(p + k);
      f[k] = t.x, f[k + 1] = t.y, f[k + 2] = t.z, f[k + 3] = t.w;
    }
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) f[k] = p[k];
  }
}
template <int VEC>
__device__ __forceinline__ void st(bf16* p, const float (&f)[VEC]) {
  if constexpr (VEC == 8) {
    store8(p, f);
  } else if constexpr (VEC == 2) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(f[0], f[1]);
  } else {
    *p = __float2bfloat16(f[0]);
  }
}
template <int VEC>
__device__ __forceinline__ void st(float* p, const float (&f)[VEC]) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) p[k] = f[k];
}

// Rotates (lo, hi) in place: lo holds x[i0 .. i0+VEC), hi holds x[i0+half ..); cs[i] = (cos, sin).
template <int VEC>
__device__ __forceinline__ void rotate(float (&lo)[VEC], float (&hi)[VEC], const float2* cs, int i0, bool inverse) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const float c = cs[i0 + k].x, s = inverse ? -cs[i0 + k].y : cs[i0 + k].y;
    const float x0 = lo[k], x1 = hi[k];
    lo[k] = x0 * c - x1 * s;
    hi[k] = x1 * c + x0 * s;
  }
}

// Moves one chunk of VEC elements at offset e of a head row: src → dst, rotating when `rotary`.
template <int VEC, typename TS, typename TD>
__device__ __forceinline__ void move_chunk(TD* dst, const TS* src, int e, const float2* cs, int rot, bool rotary,
                                           bool inverse) {
  const int half = rot / 2;
  if (rotary && e < rot) {
    if (e >= half) return;  // written by the partner chunk
    float lo[VEC], hi[VEC];
    ld<VEC>(src + e, lo);
    ld<VEC>(src + e + half, hi);
    rotate<VEC>(lo, hi, cs, e, inverse);
    st<VEC>(dst + e, lo);
    st<VEC>(dst + e + half, hi);
  } else {
    float f[VEC];
    ld<VEC>(src + e, f);
    st<VEC>(dst + e, f);
  }
}

constexpr int kMaxHalf = 512;  // rot/2 ≤ hd/2; head dims up to 1024

// Fills cs[i] = (cos, sin) of position t for i < rot/2 (block-wide, then a barrier).
__device__ __forceinline__ void fill_angles(float2* cs, int t, int rot, float base) {
  for (int i = threadIdx.x; i < rot / 2; i += blockDim.x) rope_angle(t, i, rot, base, cs[i].x, cs[i].y);
  __syncthreads();
}

// One block per row n = b·T + t; threads walk (head slot j, chunk) of the fused row.
template <int VEC>
__global__ void split_forward(bf16* q, bf16* k, bf16* v, const bf16* qkv, int T, int H, int KVH, int hd, int rot,
                              float base, bool rotate_k) {
  __shared__ float2 cs[kMaxHalf];
  const int64_t n = blockIdx.x;
  const int b = static_cast<int>(n / T), t = static_cast<int>(n % T);
  fill_angles(cs, t, rot, base);
  const int chunks = hd / VEC, slots = H + 2 * KVH;
  const bf16* row = qkv + n * slots * hd;
  for (int idx = threadIdx.x; idx < slots * chunks; idx += blockDim.x) {
    const int j = idx / chunks, e = (idx - j * chunks) * VEC;
    const bf16* src = row + j * hd;
    if (j < H)
      move_chunk<VEC>(q + ((int64_t{b} * H + j) * T + t) * hd, src, e, cs, rot, true, false);
    else if (j < H + KVH)
      move_chunk<VEC>(k + ((int64_t{b} * KVH + (j - H)) * T + t) * hd, src, e, cs, rot, rotate_k, false);
    else
      move_chunk<VEC>(v + ((int64_t{b} * KVH + (j - H - KVH)) * T + t) * hd, src, e, cs, rot, false, false);
  }
}

template <int VEC>
__global__ void split_backward(bf16* dqkv, const bf16* dq, const float* dk, const float* dv, int T, int H, int KVH,
                               int hd, int rot, float base, bool rotate_k) {
  __shared__ float2 cs[kMaxHalf];
  const int64_t n = blockIdx.x;
  const int b = static_cast<int>(n / T), t = static_cast<int>(n % T);
  fill_angles(cs, t, rot, base);
  const int chunks = hd / VEC, slots = H + 2 * KVH;
  bf16* row = dqkv + n * slots * hd;
  for (int idx = threadIdx.x; idx < slots * chunks; idx += blockDim.x) {
    const int j = idx / chunks, e = (idx - j * chunks) * VEC;
    bf16* dst = row + j * hd;
    if (j < H)
      move_chunk<VEC>(dst, dq + ((int64_t{b} * H + j) * T + t) * hd, e, cs, rot, true, true);
    else if (j < H + KVH)
      move_chunk<VEC>(dst, dk + ((int64_t{b} * KVH + (j - H)) * T + t) * hd, e, cs, rot, rotate_k, true);
    else
      move_chunk<VEC>(dst, dv + ((int64_t{b} * KVH + (j - H - KVH)) * T + t) * hd, e, cs, rot, false, true);
  }
}

template <int VEC>
__global__ void rope_plain_forward(bf16* out, const bf16* x, int64_t BH, int T, int hd, int rot, float base) {
  const int chunks = hd / VEC;
  const int64_t total = BH * T * chunks;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int e = static_cast<int>(i % chunks) * VEC;
    const int64_t row = i / chunks;
    const int t = static_cast<int>(row % T), half = rot / 2;
    if (e < half) {  // this chunk rotates: its own angles (rare op: seed-paper compatibility only)
      float lo[VEC], hi[VEC];
      ld<VEC>(x + row * hd + e, lo);
      ld<VEC>(x + row * hd + e + half, hi);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        float c, s;
        rope_angle(t, e + k, rot, base, c, s);
        const float x0 = lo[k], x1 = hi[k];
        lo[k] = x0 * c - x1 * s;
        hi[k] = x1 * c + x0 * s;
      }
      st<VEC>(out + row * hd + e, lo);
      st<VEC>(out + row * hd + e + half, hi);
    } else if (e >= rot) {
      float f[VEC];
      ld<VEC>(x + row * hd + e, f);
      st<VEC>(out + row * hd + e, f);
    }
  }
}

// dx += rope⁻¹(dout), fp32 both; only the rotary dims are rotated, the rest added as is.
__global__ void rope_plain_backward_acc(float* dx, const float* dout, int64_t BH, int T, int hd, int rot,
                                        float base) {
  const int half = rot / 2;
  const int64_t total = BH * T * hd;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int e = static_cast<int>(i % hd);
    const int64_t row = i / hd;
    if (e >= half && e < rot) continue;
    if (e < half) {
      float c, s;
      rope_angle(static_cast<int>(row % T), e, rot, base, c, s);
      const float g0 = dout[row * hd + e], g1 = dout[row * hd + e + half];
      dx[row * hd + e] += g0 * c + g1 * s;
      dx[row * hd + e + half] += g1 * c - g0 * s;
    } else {
      dx[row * hd + e] += dout[row * hd + e];
    }
  }
}

// Widest chunk that keeps every chunk inside one of [0, rot/2), [rot/2, rot), [rot, hd).
int pick_vec(int hd, int rot, bool ptrs_aligned16) {
  const int half = rot / 2;
  if (ptrs_aligned16 && hd % 8 == 0 && half % 8 == 0) return 8;
  if (hd % 2 == 0 && half % 2 == 0) return 2;
  return 1;
}

// Threads per row block: the row's chunks rounded up to whole warps, at most 256.
int row_threads(int chunks) { return static_cast<int>(std::min<int64_t>(256, ceil_div(chunks, 32) * 32)); }

// Calls f(std::integral_constant<int, VEC>{}) for the chunk width vec ∈ {8, 2, 1}: the kernels
// are templates on it, the launchers pick it at run time.
template <typename F>
void with_vec(int vec, F&& f) {
  if (vec == 8) f(std::integral_constant<int, 8>{});
  else if (vec == 2) f(std::integral_constant<int, 2>{});
  else f(std::integral_constant<int, 1>{});
}

void check_rot(int hd, int rot) {
  if (rot / 2 > kMaxHalf) throw Error("rope: rotary dims " + std::to_string(rot) + " above the supported 1024");
  if (rot < 0 || rot > hd || rot % 2 != 0)
    throw Error("rope: rotary dims " + std::to_string(rot) + " must be even and <= head dim " + std::to_string(hd));
}

}  // namespace

void qkv_split_rope_forward(bf16* q, bf16* k, bf16* v, const bf16* qkv, int B, int T, int H, int KVH, int hd,
                            int rot, float base, bool rotate_k, cudaStream_t s) {
  check_rot(hd, rot);
  const int64_t elems = int64_t{B} * T * (H + 2 * KVH) * hd;
  if (elems == 0) return;
  const bool al = aligned16(q) && aligned16(qkv) && (KVH == 0 || (aligned16(k) && aligned16(v)));
  const int vec = pick_vec(hd, rot, al);
  const unsigned rows = static_cast<unsigned>(int64_t{B} * T);
  const int threads = row_threads((H + 2 * KVH) * hd / vec);
  with_vec(vec, [&](auto V) {
    split_forward<V()><<<rows, threads, 0, s>>>(q, k, v, qkv, T, H, KVH, hd, rot, base, rotate_k);
  });
  MLKV_LAUNCH_CHECK();
}

void qkv_split_rope_backward(bf16* dqkv, const bf16* dq, const float* dk, const float* dv, int B, int T, int H,
                             int KVH, int hd, int rot, float base, bool rotate_k, cudaStream_t s) {
  check_rot(hd, rot);
  const int64_t elems = int64_t{B} * T * (H + 2 * KVH) * hd;
  if (elems == 0) return;
  const bool al = aligned16(dqkv) && aligned16(dq) && (KVH == 0 || (aligned16(dk) && aligned16(dv)));
  const int vec = pick_vec(hd, rot, al);
  const unsigned rows = static_cast<unsigned>(int64_t{B} * T);
  const int threads = row_threads((H + 2 * KVH) * hd / vec);
  with_vec(vec, [&](auto V) {
    split_backward<V()><<<rows, threads, 0, s>>>(dqkv, dq, dk, dv, T, H, KVH, hd, rot, base, rotate_k);
  });
  MLKV_LAUNCH_CHECK();
}

void rope_forward(bf16* out, const bf16* x, int64_t BH, int T, int hd, int rot, float base, cudaStream_t s) {
  check_rot(hd, rot);
  const int64_t elems = BH * T * hd;
  if (elems == 0) return;
  with_vec(pick_vec(hd, rot, aligned16(out) && aligned16(x)), [&](auto V) {
    rope_plain_forward<V()><<<grid_for(elems / V(), 256), 256, 0, s>>>(out, x, BH, T, hd, rot, base);
  });
  MLKV_LAUNCH_CHECK();
}

void rope_backward_accumulate(float* dx, const float* dout, int64_t BH, int T, int hd, int rot, float base,
                              cudaStream_t s) {
  check_rot(hd, rot);
  const int64_t elems = BH * T * hd;
  if (elems == 0) return;
  rope_plain_backward_acc<<<grid_for(elems, 256), 256, 0, s>>>(dx, dout, BH, T, hd, rot, base);
  MLKV_LAUNCH_CHECK();
}

}  // namespace mlkv::cuda
