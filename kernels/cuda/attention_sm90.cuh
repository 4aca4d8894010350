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

#include <cstdint>

#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/attention_wgmma.cuh"

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
// Ordinary (generic-proxy) writes to shared memory, cp.async included, must be fenced before
// wgmma (async proxy) reads them; each writing thread fences, then the block synchronises.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Copies rows [row0, row0+ROWS) × HD (row stride `stride` elements) into a core-matrix tile with
// cp.async; rows ≥ T are zero-filled. Consecutive threads take consecutive rows of one core
// matrix, so each warp's shared-memory writes are contiguous 128-byte runs.
template <int ROWS, int HD, int NT>
__device__ __forceinline__ void load_tile_cm_async(bf16* tile, const bf16* src, int64_t stride, int row0, int T,
                                                   int tid) {
  constexpr int kChunks = HD / 8;
  for (int c = tid; c < ROWS * kChunks; c += NT) {
    const int r8 = c & 7, rest = c >> 3;
    const int ch = rest % kChunks, rg = rest / kChunks;
    const int r = rg * 8 + r8, t = row0 + r;
    const bool valid = t < T;
    cp_async16(tile + (rg * kChunks + ch) * 64 + r8 * 8, src + (valid ? t : 0) * stride + ch * 8, valid);
  }
}

}  // namespace mlkv::cuda::attn
