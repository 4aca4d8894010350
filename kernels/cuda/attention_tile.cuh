// Building blocks of the flash-attention kernels: tensor-core MMA (m16n8k16, bf16 in, fp32
// accumulate), ldmatrix fragment loads, cp.async tile copies with zero fill, and the register
// fragment conventions the kernels share.
//
// Fragment conventions (PTX ISA, mma.m16n8k16 .row.col), lane = threadIdx.x % 32:
//   A 16×16 (4 regs of bf16x2): a0 (row lane/4, cols 2·(lane%4)+{0,1}), a1 row+8, a2 cols+8, a3 both.
//   B 16×8  (2 regs):           b0 (k 2·(lane%4)+{0,1}, n lane/4), b1 k+8.
//   C 16×8  (4 fp32):           c0,c1 (row lane/4, cols 2·(lane%4)+{0,1}), c2,c3 row+8.
// Two C tiles side by side (16×16) repack into one A fragment, which is how P and dS go from
// the score MMA into the next MMA without touching shared memory.
//
// Shared-memory tiles are row-major with rows padded by 8 bf16 (16 bytes): for every head dim
// used (64, 80, 128, 256) the 8 rows an ldmatrix phase reads then fall into 8 distinct 16-byte
// bank groups, so ldmatrix is conflict-free without a swizzle (80 does not swizzle neatly).
#pragma once
#include <cuda_bf16.h>
#include <cstdint>

namespace mlkv::cuda::attn {

using bf16 = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// 2^x by the special-function unit, flushing denormal results to zero: exp2f would add a range
// check and two multiplies around every call to keep denormals, which P and dS never need.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The first 1024-byte-aligned byte of dynamic shared memory (128-byte-swizzled regions start on
// 1024 bytes). Offsetting the __shared__ array itself, not rounding its address up as an integer,
// keeps the pointer's address space visible to the compiler: through a uintptr_t round trip every
// access became a generic one (ST.E, queued in the global-memory pipe; ATTENTION_NOTES log 16).
__device__ __forceinline__ unsigned char* smem_align1024(unsigned char* raw) {
  return raw + ((1024u - (smem_addr(raw) & 1023u)) & 1023u);
}

// ---- ldmatrix: four (x4) or two (x2) 8×8 b16 matrices; .trans delivers the transpose.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2_t(uint32_t (&r)[2], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(addr));
}

// d(16×8) += a(16×16) · b(16×8), fp32 accumulate.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo = the lower column
  return *reinterpret_cast<uint32_t*>(&v);
}

// A fragment (16×16) from two accumulator tiles c_lo (cols 0..7) and c_hi (cols 8..15).
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c_lo)[4], const float (&c_hi)[4]) {
  a[0] = pack_bf16(c_lo[0], c_lo[1]);
  a[1] = pack_bf16(c_lo[2], c_lo[3]);
  a[2] = pack_bf16(c_hi[0], c_hi[1]);
  a[3] = pack_bf16(c_hi[2], c_hi[3]);
}

// ---- fragment loads from a padded row-major tile (ld elements per row).
// A (16 rows from row0, 16 cols from col0) of a tile stored [m][k].
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const bf16* tile, int ld, int row0, int col0, int lane) {
  ldsm_x4(a, smem_addr(tile + (row0 + (lane & 15)) * ld + col0 + (lane >> 4) * 8));
}
// B fragments of two n8 tiles (n0..n0+15) at k0..k0+15 from a tile stored [n][k] (k contiguous):
// b[0],b[1] for n0..n0+7 and b[2],b[3] for n0+8..n0+15.
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const bf16* tile, int ld, int n0, int k0, int lane) {
  ldsm_x4(b, smem_addr(tile + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8));
}
// The same two n8 tiles from a tile stored [k][n] (n contiguous), through ldmatrix.trans.
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const bf16* tile, int ld, int k0, int n0, int lane) {
  ldsm_x4_t(b, smem_addr(tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8));
}
// One n8 tile from a [k][n] tile (for an odd count of n8 tiles, e.g. head dim 80 split in two).
__device__ __forceinline__ void load_b_kn_one(uint32_t (&b)[2], const bf16* tile, int ld, int k0, int n0, int lane) {
  ldsm_x2_t(b, smem_addr(tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0));
}

// ---- cp.async: 16-byte global→shared copies; src_bytes = 0 fills zeros (rows past T).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Copies rows [row0, row0+ROWS) × HD of a bf16 matrix with row stride `stride` (elements) into
// a padded tile (ld = HD + 8). Rows ≥ T are zero-filled, their source clamped to row 0 so the
// address stays valid. All NT threads of the block take part.
template <int ROWS, int HD, int NT>
__device__ __forceinline__ void load_tile_async(bf16* tile, const bf16* src, int64_t stride, int row0, int T,
                                                int tid) {
  constexpr int kChunks = HD / 8;  // 16-byte chunks per row
  constexpr int kLd = HD + 8;
  for (int c = tid; c < ROWS * kChunks; c += NT) {
    const int r = c / kChunks, ch = c % kChunks;
    const int t = row0 + r;
    const bool valid = t < T;
    cp_async16(tile + r * kLd + ch * 8, src + (valid ? t : 0) * stride + ch * 8, valid);
  }
}

// Copies N fp32 values starting at element e0 of a vector of length T into shared memory, one
// 4-byte cp.async each (the per-(b, h) vectors start at any 4-byte offset when T % 4 != 0);
// values past T become zero.
template <int N, int NT>
__device__ __forceinline__ void load_vec_async(float* dst, const float* src, int e0, int T, int tid) {
  for (int c = tid; c < N; c += NT) {
    const int e = e0 + c;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst + c)),
                 "l"(src + (e < T ? e : 0)), "r"(e < T ? 4 : 0));
  }
}

}  // namespace mlkv::cuda::attn
