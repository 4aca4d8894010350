// Hopper asynchronous-copy building blocks of the warp-specialised attention kernels
// (attention_sm90_ws_forward.cu, attention_sm90_ws_backward.cu): TMA tensor maps (host), TMA tile
// loads, stores and reduce-adds, mbarriers, named barriers, cross-block turn counters,
// register-count hand-over, and the 128-byte-swizzle layout that wgmma reads as TMA writes it.
//
// Tile layout ("SW128"). TMA copies a box of R rows × 64 bf16 (128 bytes a row) with
// CU_TENSOR_MAP_SWIZZLE_128B: row r lands at r·128 bytes with its 16-byte chunks permuted by
// (chunk ^ (r % 8)). A head dim of 64·C is C such boxes, each its own R × 128-byte region. That
// is the canonical 128-byte-swizzle layout wgmma reads (regions 1024-byte aligned):
//   * K-major (GEMM k = d; Q and K in S = Q·Kᵀ): SBO = 1024 (next 8 rows), LBO unused; the k-step
//     s (16 of d) of region s / 4 starts 32·(s % 4) bytes in (the swizzle is a function of the
//     address bits, so a start inside the 1024-byte atom reads the right chunks);
//   * MN-major (GEMM k = row; V in O = P·V): SBO = 1024 (next 8 rows = k), LBO = the region
//     stride (next 64 of n = d); the k-step s (16 rows) starts 2048·s bytes in.
#pragma once
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/attention_tile.cuh"

namespace mlkv::cuda::attn {

// ---- host
inline PFN_cuTensorMapEncodeTiled_v12000 tmap_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    check_cuda(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found),
               "cudaGetDriverEntryPointByVersion(cuTensorMapEncodeTiled)");
    if (found != cudaDriverEntryPointSuccess || fn == nullptr)
      throw Error("attention: the CUDA driver has no cuTensorMapEncodeTiled (needs driver 12.0 or newer)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

// A RANK-dimensional tensor map (dims[0] contiguous) read or written in boxes; with
// CU_TENSOR_MAP_SWIZZLE_128B the box rows are 128 bytes (64 bf16 or 32 fp32). Elements outside the
// tensor read as zeros and are not written.
template <int RANK>
inline CUtensorMap make_tmap(CUtensorMapDataType type, uint32_t elem_bytes, const void* base,
                             const cuuint64_t (&dims)[RANK], const cuuint32_t (&box)[RANK],
                             CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_128B) {
  CUtensorMap map;
  cuuint64_t strides[RANK > 1 ? RANK - 1 : 1];  // bytes, dims 1..RANK-1
  cuuint64_t stride = elem_bytes;
  for (int i = 0; i < RANK - 1; ++i) strides[i] = stride *= dims[i];
  cuuint32_t elem_strides[RANK];
  for (int i = 0; i < RANK; ++i) elem_strides[i] = 1;
  const CUresult r =
      tmap_encoder()(&map, type, RANK, const_cast<void*>(base), dims, strides, box, elem_strides,
                     CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                     CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    std::string shape;
    for (int i = RANK - 1; i >= 0; --i) shape += std::to_string(dims[i]) + (i ? ", " : "");
    std::string box_s;
    for (int i = RANK - 1; i >= 0; --i) box_s += std::to_string(box[i]) + (i ? " × " : "");
    throw Error("attention: cuTensorMapEncodeTiled failed (CUresult " + std::to_string(int(r)) + ") for a [" + shape +
                "] tensor of " + std::to_string(elem_bytes) + "-byte elements, box " + box_s);
  }
  return map;
}

// A 3-D bf16 tensor [outer][rows][cols] read in boxes of box_rows × 64 columns.
inline CUtensorMap make_tmap_bf16_3d(const void* base, uint64_t cols, uint64_t rows, uint64_t outer,
                                     uint32_t box_rows) {
  return make_tmap<3>(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, base, {cols, rows, outer}, {64, box_rows, 1});
}
// dO or O as [B][T][H][hd] (the model's [B, T, H·hd]) per head in boxes of box_rows × 64
// columns: past column hd (hd 80's second box) a load is zero-filled and a store clipped, never
// reaching into the next head.
inline CUtensorMap make_tmap_bf16_heads(const void* base, uint64_t hd, uint64_t H, uint64_t T, uint64_t B,
                                        uint32_t box_rows) {
  return make_tmap<4>(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, base, {hd, H, T, B}, {64, 1, box_rows, 1});
}
// A 2-D fp32 tensor [rows][cols] written (stored or reduce-added) in boxes of box_rows × 32 columns.
inline CUtensorMap make_tmap_f32_2d(const void* base, uint64_t cols, uint64_t rows, uint32_t box_rows) {
  return make_tmap<2>(CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, base, {cols, rows}, {32, box_rows});
}
// A 1-D fp32 vector read in unswizzled boxes of `box` elements.
inline CUtensorMap make_tmap_f32_1d(const void* base, uint64_t n, uint32_t box) {
  return make_tmap<1>(CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, base, {n}, {box}, CU_TENSOR_MAP_SWIZZLE_NONE);
}

// ---- device (the SW128 wgmma descriptor is desc_sw128 in attention_sm90.cuh)
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count));
}
// Makes the initialised barriers visible to the async proxy (TMA) before first use.
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// Waits until the barrier's phase with the given parity has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nWAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

// TMA: box (c0 = column, c1 = row, c2 = outer index) of `map` into shared memory at dst; the
// bytes are counted on `bar` (complete_tx).
__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, int c0, int c1, int c2,
                                            uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::
          "r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(smem_addr(bar))
      : "memory");
}
// The same for a 4-D map (c0 = column, c1 = head, c2 = row, c3 = batch: make_tmap_bf16_heads).
__device__ __forceinline__ void tma_load_4d(void* dst, const CUtensorMap* map, int c0, int c1, int c2, int c3,
                                            uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_addr(bar))
      : "memory");
}
__device__ __forceinline__ void tma_prefetch_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// TMA: the 1-D box at element c0 of `map` into shared memory at dst, counted on `bar`.
__device__ __forceinline__ void tma_load_1d(void* dst, const CUtensorMap* map, int c0, uint64_t* bar) {
  asm volatile("cp.async.bulk.tensor.1d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2}], [%3];\n" ::
                   "r"(smem_addr(dst)),
               "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(smem_addr(bar))
               : "memory");
}

// TMA writes of a shared-memory box to global memory (tensor map coordinates c0 = column, c1 =
// row; 4-D: c1 = head, c2 = row, c3 = batch): a store, or an fp32 add performed in L2. Both are
// asynchronous (bulk async-groups): commit, then wait with bulk_wait_read (the shared-memory
// source may be overwritten) or bulk_wait (the global writes are done).
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, int c0, int c1, const void* src) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.tile.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(smem_addr(src)), "r"(c0), "r"(c1)
               : "memory");
}
__device__ __forceinline__ void tma_store_4d(const CUtensorMap* map, int c0, int c1, int c2, int c3, const void* src) {
  asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(smem_addr(src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
               : "memory");
}
__device__ __forceinline__ void tma_reduce_add_2d(const CUtensorMap* map, int c0, int c1, const void* src) {
  asm volatile("cp.reduce.async.bulk.tensor.2d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(smem_addr(src)), "r"(c0), "r"(c1)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
template <int N>
__device__ __forceinline__ void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}

// Ordering between thread blocks through a counter in global memory (one thread each side).
__device__ __forceinline__ int ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release(int* p, int v) {
  asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
// Orders this thread's generic-proxy global accesses with its async-proxy (TMA) ones.
__device__ __forceinline__ void fence_proxy_async_global() {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}

// Named barriers (ids 1..15; 0 is __syncthreads): sync waits for `count` threads, arrive counts
// this warp's threads without waiting.
__device__ __forceinline__ void named_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

// Hands registers between warpgroups (every warp of a warpgroup executes the same one).
template <int N>
__device__ __forceinline__ void regs_dealloc() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void regs_alloc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

// Keeps 32-bit registers live (and unchanged by the compiler) up to this point: placed after
// the wgmma.wait_group that retires a product reading them as its A operand.
template <int N>
__device__ __forceinline__ void fence_regs_u32(uint32_t (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(r[i][e])::"memory");
}

}  // namespace mlkv::cuda::attn
