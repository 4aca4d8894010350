// Host-side helpers shared by the attention launchers: argument checks, launch checks, the
// dynamic shared-memory opt-in, and the head split of the dK/dV kernels. Included only from the
// attention .cu files.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "core/errors.h"
#include "kernels/cuda/attention.h"

namespace mlkv::cuda::attn {

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string("attention: ") + what + ": " + cudaGetErrorString(e));
}

// Throws after a launch that failed to start (bad configuration, too much shared memory).
inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

// Streaming multiprocessors of the current device (grid sizes, the head split).
inline int sm_count() {
  int dev = 0, n = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  return n;
}

// Bytes of L2 cache of the current device.
inline int64_t l2_bytes() {
  int dev = 0, n = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&n, cudaDevAttrL2CacheSize, dev), "cudaDeviceGetAttribute");
  return n;
}

// L2 sections. Kernels whose blocks re-read a head's tensors (the forward's K/V, the backward's
// Q, dO and fp32 dQ) take their heads a section at a time, so that the blocks running together
// touch only one section's bytes and find them in L2; numbering every head at once (the order
// before 2026-12-07) spreads the running blocks over all heads, whose bytes exceed L2 for MHA
// at T 2048, so each re-read came from memory. The units (KV heads, or (b, KV head) pairs) are
// cut into as few sections as keep each within the budget, of sizes that differ by at most one:
// a small last section would start its heaviest tiles (the most causal ones, numbered first in
// each section) when little work is left to run beside them. Measured (H100, ATTENTION_NOTES
// log 22): the forward at 16,12,12,2048,64 0.320 ms with sections of 50, 50, 50 and 42 KV heads,
// 0.304-0.308 with equal ones; 8,8,8,2048,256 0.26-0.28 with 12 × 5 + 4, 0.250-0.256 with 8 × 8
// or 16 × 4.
struct L2Sections {
  int n_a = 1, a = 1 << 30, b = 1;  // the first n_a sections hold a units each, the rest b each
};
// Budget: `l2_fraction` of L2, or MLKV_ATTN_L2_MIB=n MiB for every kernel (0: one section of all,
// the order before sections), a measurement switch that also forces sections where a kernel's
// default leaves them off (ws_bwd_sectioned). MLKV_ATTN_L2_EVEN=0 (measurement) keeps sections
// of the budget's full size and a ragged last one, the numbering of log 19.
L2Sections l2_sections(int64_t unit_bytes, int64_t units, double l2_fraction);

// Where work item w falls when every unit owns per_unit consecutive items of its section's
// numbering: the section's first unit, its units, and w's index within the section.
struct SectionPos {
  int first, size, rest;
};
__host__ __device__ __forceinline__ SectionPos section_pos(int w, const L2Sections& sec, int per_unit) {
  const int in_a = sec.n_a * sec.a * per_unit;  // items in the first n_a sections
  if (w < in_a) {
    const int s = w / (sec.a * per_unit);
    return {s * sec.a, sec.a, w - s * sec.a * per_unit};
  }
  w -= in_a;
  const int s = w / (sec.b * per_unit);
  return {sec.n_a * sec.a + s * sec.b, sec.b, w - s * sec.b * per_unit};
}

// A measurement switch's value where it divides `of` (0 where unset; otherwise a warning, once,
// and 0, so that the default runs and is not measured under the forced value's name).
int forced_divisor(const char* var, int of);

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

inline void check_shape(const char* op, int B, int T, int H, int KVH, int hd) {
  auto fail = [&](const std::string& why) {
    throw Error(std::string(op) + ": " + why + " (B=" + std::to_string(B) + " T=" + std::to_string(T) +
                " H=" + std::to_string(H) + " KVH=" + std::to_string(KVH) + " hd=" + std::to_string(hd) + ")");
  };
  if (!attention_supports_head_dim(hd))
    fail("unsupported head dim " + std::to_string(hd) + "; the CUDA attention kernels support 64, 80, 128, 256");
  if (B <= 0 || T <= 0 || H <= 0 || KVH <= 0) fail("sizes must be positive");
  if (H % KVH != 0) fail("query heads must be a multiple of KV heads");
  if (B > 65535 || H > 65535) fail("B and H must be at most 65535 (grid limits)");
}

// Kernels above 48 KB of dynamic shared memory need an explicit opt-in (per device; cheap, so
// it is simply repeated before every launch instead of cached per device).
template <typename Kernel>
inline void allow_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
}

// Head split of the dK/dV kernels. One block per (key tile, b, kv head) loops over every query
// head of the group; with few KV heads and small B that is fewer blocks than SMs (2,16,1,8192,128:
// 128 blocks). Then the group's heads are cut into `split` slices of heads_per heads, one block
// each: slice 0 adds into dk/dv as before, slice s > 0 writes its fp32 sums to part_k/part_v
// [split-1][B, KVH, T, hd], and add_dkdv_partials adds slices 1.. to dk/dv in slice order. The
// order is fixed, so the result stays bitwise deterministic without atomics.
struct DkdvSplit {
  int split = 1, heads_per = 1;
  L2Sections section;  // of (b, KV head) pairs, dkdv_block's numbering (default: one of all)
  bool slice0_adds = true;  // false: slice 0 assigns dk, dv (attention_backward's `accumulate`)
  float* part_k = nullptr;
  float* part_v = nullptr;
};

// The split for a dK/dV kernel with key tiles of key_tile rows (partials unset): 1 when there are
// enough blocks for the SMs, else the smallest divisor of the group that gives enough.
// short_blocks (hd 256's warp-specialised backward) also splits until a block takes at most 2
// query heads or there are 8 blocks a SM: its 64 × 64 steps are long, and with 256 blocks of a
// whole group at 8,8,1,2048,256 the longest block alone was as long as an SM's share of the
// work. Measured, H100, that shape's backward 1.50 ms unsplit, 1.30 in 2 slices, 1.24 in 4
// (cuDNN 1.23); 8,8,2 1.27 → 1.25 in 2, 1.47 in 4; the 128-key kernels gained nothing (hd 64 and
// 80 MQA/GQA 1-2 % slower in 2, 2,16,1,8192,128 the same in 4 as in 2; ATTENTION_NOTES log 22).
// MLKV_ATTN_BWD_SPLIT=n (a divisor of the group) forces n slices, for measurements.
DkdvSplit choose_dkdv_split(int B, int T, int H, int KVH, int key_tile, bool short_blocks = false);
// Floats of partial scratch the split needs (part_k and part_v together).
size_t dkdv_partial_floats(const DkdvSplit& sp, int B, int T, int KVH, int hd);
// dk, dv [B, KVH, T, hd] += Σ_{s=1..split-1} partials (s ascending). No-op for split 1.
void add_dkdv_partials(float* dk, float* dv, const DkdvSplit& sp, int B, int T, int KVH, int hd,
                       cudaStream_t stream);

// The (key tile, b, kv head, head slice) of a dK/dV block. Numbered by L2 section (sp.section),
// then with the key tile slowest, so that all blocks of key tile 0 (the most causal query tiles)
// start first and the light last tiles fill the SMs at the end (longest job first), and the
// slices of one tile run side by side. A block waiting on key tile jt - 1 of its pair waits on a
// block numbered before it. The grid is every key tile × B·KVH pairs × slices.
struct DkdvBlock {
  int jt, b, g, slice;
};
__device__ __forceinline__ DkdvBlock dkdv_block(const DkdvSplit& sp, int B, int KVH) {
  const int pairs = B * KVH, n_jt = gridDim.x / (pairs * sp.split);
  const L2Sections sec = sp.section.a < pairs ? sp.section : L2Sections{1, pairs, 1};
  const SectionPos at = section_pos(blockIdx.x, sec, n_jt * sp.split);
  DkdvBlock r;
  r.slice = at.rest % sp.split;
  const int idx = at.rest / sp.split;
  const int pair = at.first + idx % at.size;
  r.jt = idx / at.size;
  r.g = pair % KVH;
  r.b = pair / KVH;
  return r;
}

// Where a dK/dV block's fp32 sums go: slice 0 adds them into the caller's dk, dv (or assigns
// them, without slice0_adds); slice s > 0 writes them to partial s-1 (add_dkdv_partials adds
// those afterwards). `off` is an element offset into [B, KVH, T, hd]; each call stores two
// adjacent columns of one key row.
struct DkdvOut {
  float* k;
  float* v;
  bool adds;
  __device__ __forceinline__ DkdvOut(float* dk, float* dv, const DkdvSplit& sp, int slice, int64_t kv_elems)
      : k(slice == 0 ? dk : sp.part_k + (slice - 1) * kv_elems),
        v(slice == 0 ? dv : sp.part_v + (slice - 1) * kv_elems),
        adds(slice == 0 && sp.slice0_adds) {}
  // The sums this block adds to at off (zeros where this block is the only writer: a partial, or
  // slice 0 assigning).
  __device__ __forceinline__ void load(int64_t off, float2& xk, float2& xv) const {
    xk = adds ? *reinterpret_cast<const float2*>(k + off) : make_float2(0.f, 0.f);
    xv = adds ? *reinterpret_cast<const float2*>(v + off) : make_float2(0.f, 0.f);
  }
  __device__ __forceinline__ void store(int64_t off, float2 xk, float2 xv) const {
    *reinterpret_cast<float2*>(k + off) = xk;
    *reinterpret_cast<float2*>(v + off) = xv;
  }
  __device__ __forceinline__ void add(int64_t off, float k0, float k1, float v0, float v1) const {
    float2 xk, xv;
    load(off, xk, xv);
    store(off, make_float2(xk.x + k0, xk.y + k1), make_float2(xv.x + v0, xv.y + v1));
  }
};

}  // namespace mlkv::cuda::attn
