// Hopper (sm_90a) building blocks of the attention kernels: the shared-memory tile layout that
// wgmma reads, its matrix descriptors, and the wgmma fence/commit/wait protocol.
//
// Tile layout ("core-matrix" layout, no swizzle). A tile of R rows × HD bf16 (rows are keys or
// queries, HD the head dim) is stored as 8×8 core matrices of 128 contiguous bytes (8 rows × 16
// bytes); core matrix (row/8, d/8) sits at ((row/8)·(HD/8) + d/8)·128 bytes. The same tile
// serves wgmma two ways (checked on the H100 by a probe, 2026-11-23):
//   * K-major (GEMM k = d, e.g. K in S = Q·Kᵀ):     LBO = 128 (next 8 of k), SBO = 16·HD (next 8 rows);
//     k-step s (16 of d) starts 256·s bytes in.
//   * MN-major (GEMM k = row, e.g. V in O = P·V):   LBO = 16·HD (next 8 rows = k), SBO = 128 (next 8 of n = d);
//     k-step s (16 rows) starts 2·16·HD·s bytes in; instruction flag trans-b = 1.
// Reading one core matrix is one conflict-free 128-byte wavefront, so no swizzle is needed, and
// the layout is the same for every head dim (80 included).
#pragma once
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/attention_wgmma.cuh"

// MLKV_SM90A: defined in the device pass that has the sm_90a features (wgmma, setmaxnreg, TMA);
// the kernels' bodies are empty in every other pass, which leaves their device helpers unused
// there (hence the suppressed "declared but never referenced").
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MLKV_SM90A 1
#endif
#pragma nv_diag_suppress 177

namespace mlkv::cuda::attn {

// Element offset of (row, d) in a core-matrix tile with HD columns.
template <int HD>
__device__ __forceinline__ int cm_offset(int row, int d) {
  return ((row >> 3) * (HD / 8) + (d >> 3)) * 64 + (row & 7) * 8 + (d & 7);
}

__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((addr >> 4) & 0x3FFF) | (uint64_t((lbo >> 4) & 0x3FFF) << 16) |
         (uint64_t((sbo >> 4) & 0x3FFF) << 32);  // bits 62-63 = 0: no swizzle
}
// The same for a 128-byte-swizzled tile as TMA writes it (layout type 1 in bits 62-63; the
// layout is described in attention_tma.cuh).
__device__ __forceinline__ uint64_t desc_sw128(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return make_desc(addr, lbo, sbo) | (uint64_t(1) << 62);
}
// Operand of k-step ks, rows from row0 (a multiple of 8), read K-major (k = d).
template <int HD>
__device__ __forceinline__ uint64_t desc_kmajor(const bf16* tile, int row0, int ks) {
  return make_desc(smem_addr(tile) + (row0 / 8) * (HD / 8) * 128 + ks * 256, 128, 16 * HD);
}
// Operand of k-step ks (rows 16·ks.. of the tile), read MN-major (k = row, n = d).
template <int HD>
__device__ __forceinline__ uint64_t desc_mnmajor(const bf16* tile, int ks) {
  return make_desc(smem_addr(tile) + ks * 2 * (HD / 8) * 128, 16 * HD, 128);
}

// Columns of the accumulators and products for a head dim of hd: whole 16-column k-steps and
// N tiles (hd 80 on the hd-128 warp-specialised kernels: 80, the columns past it zero).
__host__ __device__ constexpr int acc_cols(int hd) { return (hd + 15) / 16 * 16; }

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving uses of wgmma accumulators across the wait (the asm that
// issued the wgmma "wrote" them long before the hardware does).
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// Stores an accumulator tile (this warp's 16 rows from row0, N columns, the mma C layout) as bf16
// into a core-matrix tile with N columns, where wgmma reads it as a K-major A operand. Each
// n8 column block of the warp is one 128-byte core matrix per 8 rows: conflict-free 4-byte stores.
//
// Why P and dS go through shared memory rather than straight from registers (wgmma's A-from-
// registers form): the tensor cores read register operands after the wgmma instruction has
// issued, but ptxas reuses those registers for other values right after the issue (seen in the
// SASS, and as wrong results on the H100), so an A-from-registers product cannot run while the
// warps compute the next P. From shared memory it can.
template <int N>
__device__ __forceinline__ void store_acc_cm(bf16* tile, int row0, const float (&c)[N / 2], int lane) {
  const int r = row0 + (lane >> 2);
#pragma unroll
  for (int nt = 0; nt < N / 8; ++nt) {
    const int col = nt * 8 + (lane & 3) * 2;
    *reinterpret_cast<uint32_t*>(tile + cm_offset<N>(r, col)) = pack_bf16(c[4 * nt], c[4 * nt + 1]);
    *reinterpret_cast<uint32_t*>(tile + cm_offset<N>(r + 8, col)) = pack_bf16(c[4 * nt + 2], c[4 * nt + 3]);
  }
}

// Online softmax of one warp's 16 rows × BC scores of a key tile at c0 (mma C layout: this
// thread's rows r0 and r0 + 8; wrow0 = the warp's first row), in place: keys past the causal
// diagonal or past T are masked, S becomes the unnormalised P = exp2(S·scale_log2 − m), and the
// running max m and per-thread partial sums l are updated; alpha = exp2(m_old − m_new) rescales
// what came before. Used by both sm90 forwards.
template <int BC>
__device__ __forceinline__ void online_softmax_tile(float (&s)[BC / 2], float (&m)[2], float (&l)[2],
                                                    float (&alpha)[2], int c0, int wrow0, int r0, int T,
                                                    float scale_log2, int lane) {
  if (c0 + BC - 1 > wrow0 || c0 + BC > T) {
#pragma unroll
    for (int nt = 0; nt < BC / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = c0 + nt * 8 + (lane & 3) * 2 + (e & 1);
        const int row = r0 + (e >> 1) * 8;
        if (col > row || col >= T) s[4 * nt + e] = -INFINITY;
      }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    // Four independent max and sum chains: with two warps per scheduler, a single chain of
    // dependent adds would leave the warp waiting on latency.
    float mp[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < BC / 8; ++nt)
      mp[nt & 3] = fmaxf(mp[nt & 3], fmaxf(s[4 * nt + 2 * r], s[4 * nt + 2 * r + 1]));
    float mx = fmaxf(fmaxf(mp[0], mp[1]), fmaxf(mp[2], mp[3]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m[r], mx * scale_log2);
    const float m_use = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing visible yet
    alpha[r] = fast_exp2(m[r] - m_use);
    m[r] = m_new;
    float sp[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < BC / 8; ++nt) {
      float& x0 = s[4 * nt + 2 * r];
      float& x1 = s[4 * nt + 2 * r + 1];
      x0 = fast_exp2(fmaf(x0, scale_log2, -m_use));
      x1 = fast_exp2(fmaf(x1, scale_log2, -m_use));
      sp[nt & 3] += x0 + x1;
    }
    l[r] = l[r] * alpha[r] + ((sp[0] + sp[1]) + (sp[2] + sp[3]));
  }
}

// O (this thread's part of a 64 × N accumulator, rows r0 and r0 + 8) *= the rows' alpha.
template <int N>
__device__ __forceinline__ void scale_rows(float (&o)[N / 2], const float (&alpha)[2]) {
#pragma unroll
  for (int dt = 0; dt < N / 8; ++dt) {
    o[4 * dt] *= alpha[0];
    o[4 * dt + 1] *= alpha[0];
    o[4 * dt + 2] *= alpha[1];
    o[4 * dt + 3] *= alpha[1];
  }
}

// A warpgroup's 64-key dK, dV accumulators (64 × N each, the wgmma C layout: this thread's keys
// key_r and key_r + 8) into `out` at kvbase, rows ROW apart (the head dim; N is less where the
// warpgroup holds only some columns), rows ≥ T skipped; dK takes the softmax scale here.
// Each (column pair, key) is a read-modify-write of dk and dv. Written one after another, every
// read must stay behind the writes before it (dk and dv may alias, as far as the compiler knows),
// so each would wait a whole global-memory latency, N / 4 of them in a row; the reads of up to
// 16 pairs are issued together instead, then their writes.
// COLS < N: the accumulators' columns past COLS are padding (hd 80 on the 128-column kernel),
// never stored.
template <int N, int ROW = N, int COLS = N>
__device__ __forceinline__ void add_dkdv_acc(const DkdvOut& out, int64_t kvbase, int key_r, int T, int lane,
                                             const float (&dka)[N / 2], const float (&dva)[N / 2], float scale) {
  static_assert(COLS <= N && COLS % 8 == 0, "whole 8-column accumulator tiles");
  constexpr int kPairs = COLS / 4;  // (dt, hr): column pair 8·dt + 2·(lane % 4), key key_r + 8·hr
  constexpr int kGroup = kPairs < 16 ? kPairs : 16;
  const auto offset = [&](int p) { return kvbase + int64_t(key_r + (p & 1) * 8) * ROW + (p >> 1) * 8 + (lane & 3) * 2; };
#pragma unroll
  for (int g0 = 0; g0 < kPairs; g0 += kGroup) {
    float2 xk[kGroup], xv[kGroup];
#pragma unroll
    for (int i = 0; i < kGroup; ++i)
      if (g0 + i < kPairs && key_r + ((g0 + i) & 1) * 8 < T) out.load(offset(g0 + i), xk[i], xv[i]);
#pragma unroll
    for (int i = 0; i < kGroup; ++i) {
      const int p = g0 + i, e = 4 * (p >> 1) + 2 * (p & 1);  // dka/dva index of the pair
      if (p >= kPairs || key_r + (p & 1) * 8 >= T) continue;
      out.store(offset(p), make_float2(xk[i].x + dka[e] * scale, xk[i].y + dka[e + 1] * scale),
                make_float2(xv[i].x + dva[e], xv[i].y + dva[e + 1]));
    }
  }
}

// Ordinary (generic-proxy) writes to shared memory, cp.async included, must be fenced before
// wgmma (async proxy) reads them; each writing thread fences, then the block synchronises.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Copies rows [row0, row0+ROWS) × HD (row stride `stride` elements) into a core-matrix tile with
// cp.async. Chunk c (16 bytes) of the tile sits at element 8·c: consecutive threads write
// consecutive 16-byte pieces of one core matrix, 8 rows × 1 chunk, so a warp's shared-memory
// writes are contiguous and its global reads are 8 rows × 64 contiguous bytes. Each thread's
// (row, chunk) pairs are the same for every tile, so they are computed once. Rows ≥ T read row
// T-1 instead of zeros: whatever lands there is finite and every use of those rows is masked
// (P = 0 for keys ≥ T; rows of queries ≥ T are never stored).
template <int ROWS, int HD, int NT>
struct TileLoader {
  static constexpr int kChunks = ROWS * HD / 8;
  static constexpr int kPerThread = (kChunks + NT - 1) / NT;
  int row[kPerThread];
  int col[kPerThread];  // element offset of the chunk within its row
  __device__ __forceinline__ explicit TileLoader(int tid) {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int c = tid + i * NT;
      const int rest = c >> 3;
      row[i] = (rest / (HD / 8)) * 8 + (c & 7);
      col[i] = (rest % (HD / 8)) * 8;
    }
  }
  __device__ __forceinline__ void load(bf16* tile, const bf16* src, int64_t stride, int row0, int T, int tid) const {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int c = tid + i * NT;
      if (kChunks % NT != 0 && c >= kChunks) break;
      const int t = min(row0 + row[i], T - 1);
      cp_async16(tile + c * 8, src + t * stride + col[i]);
    }
  }
};

}  // namespace mlkv::cuda::attn
