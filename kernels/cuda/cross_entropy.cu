// Fused softmax cross-entropy over V (padded vocabulary) columns, one block per row:
//   losses[n] = logsumexp(logits[n, :]) − logits[n, target[n]]   (0 where target[n] < 0)
//   with compute_grad, logits[n, :] ← dloss·(softmax(logits[n, :]) − onehot(target[n]))  in place
// Pass 1 reads the row once with an online softmax (running max and rescaled sum per thread, then
// merged across the block), pass 2 writes the gradient over it. When the row fits (V·2 bytes ≤
// 112 KB, two blocks per SM: every Pythia vocabulary), pass 1 also parks it in shared memory and
// pass 2 reads it from there: the logits cross DRAM exactly once each way (measured before: a
// second read from DRAM, as 528 resident 100 KB rows do not stay in the 50 MB L2). Otherwise pass
// 2 re-reads the row from global memory. The probabilities never exist in memory.
#include <cfloat>

#include "kernels/cuda/backend_ops.cuh"

namespace mlkv::cuda {

namespace {

constexpr int kThreads = 512;
// Two row caches per SM (228 KB of shared memory): V ≤ 57344 takes the single-read path.
constexpr size_t kMaxRowCacheBytes = 112 * 1024;

// (m, s) represents s·e^m; merging two keeps the larger exponent.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  const float mm = fmaxf(m, m2);
  if (mm == -FLT_MAX) return;  // both empty
  s = s * __expf(m - mm) + s2 * __expf(m2 - mm);
  m = mm;
}

template <int VEC, bool SMEM>
__global__ void __launch_bounds__(kThreads) softmax_ce(float* losses, bf16* logits, const int32_t* targets, int64_t V,
                                                      float dloss, bool compute_grad) {
  extern __shared__ Bf16x8 row_cache[];  // SMEM: the row, V/8 vectors
  __shared__ float sm_m[kThreads / 32], sm_s[kThreads / 32];
  __shared__ float row_m, row_s;
  const int64_t row = blockIdx.x;
  bf16* x = logits + row * V;
  const int32_t target = targets[row];
  if (target < 0) {  // ignored position: no loss, no gradient
    if (threadIdx.x == 0) losses[row] = 0.0f;
    if (compute_grad)
      for (int64_t i = threadIdx.x; i < V; i += kThreads) x[i] = __float2bfloat16(0.0f);
    return;
  }
  float m = -FLT_MAX, s = 0.0f;
#pragma unroll 4
  for (int64_t i = int64_t{threadIdx.x} * VEC; i < V; i += int64_t{kThreads} * VEC) {
    float f[VEC];
    if constexpr (SMEM) {
      const Bf16x8 raw = *reinterpret_cast<const Bf16x8*>(x + i);
      row_cache[i / 8] = raw;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 t = __bfloat1622float2(raw.h[k]);
        f[2 * k] = t.x;
        f[2 * k + 1] = t.y;
      }
    } else if constexpr (VEC == 8) {
      load8(x + i, f);
    } else {
      f[0] = __bfloat162float(x[i]);
    }
    float lm = f[0];
#pragma unroll
    for (int k = 1; k < VEC; ++k) lm = fmaxf(lm, f[k]);
    float ls = 0.0f;
#pragma unroll
    for (int k = 0; k < VEC; ++k) ls += __expf(f[k] - lm);
    merge(m, s, lm, ls);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge(m, s, m2, s2);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    sm_m[warp] = m;
    sm_s[warp] = s;
  }
  // The target logit is read before the barrier, i.e. before any thread overwrites the row.
  const float xt = (threadIdx.x == 0 && target < V) ? __bfloat162float(x[target]) : 0.0f;
  __syncthreads();
  if (threadIdx.x == 0) {
    float bm = sm_m[0], bs = sm_s[0];
    for (int w = 1; w < kThreads / 32; ++w) merge(bm, bs, sm_m[w], sm_s[w]);  // fixed order
    row_m = bm;
    row_s = bs;
    losses[row] = target < V ? logf(bs) + bm - xt : __int_as_float(0x7fc00000);  // NaN flags a bad target
  }
  __syncthreads();
  if (!compute_grad) return;
  const float rm = row_m, inv_s = 1.0f / row_s;
  for (int64_t i = int64_t{threadIdx.x} * VEC; i < V; i += int64_t{kThreads} * VEC) {
    float f[VEC];
    if constexpr (SMEM) load8(reinterpret_cast<const bf16*>(row_cache + i / 8), f);  // own writes: no barrier needed
    else if constexpr (VEC == 8) load8(x + i, f);
    else f[0] = __bfloat162float(x[i]);
#pragma unroll
    for (int k = 0; k < VEC; ++k) f[k] = dloss * (__expf(f[k] - rm) * inv_s - (i + k == target ? 1.0f : 0.0f));
    if constexpr (VEC == 8) store8(x + i, f);
    else x[i] = __float2bfloat16(f[0]);
  }
}

}  // namespace

void cross_entropy(float* losses, bf16* logits, const int32_t* targets, int64_t N, int64_t V, float dloss,
                   bool compute_grad, cudaStream_t s) {
  if (N == 0) return;
  const unsigned rows = static_cast<unsigned>(N);
  if (V % 8 == 0 && aligned16(logits)) {
    const size_t smem = size_t(V) * sizeof(bf16);
    if (smem <= kMaxRowCacheBytes) {
      static size_t opted_in = 0;  // raise the dynamic shared-memory limit once per size
      if (smem > opted_in) {
        MLKV_CUDA_CHECK(cudaFuncSetAttribute(softmax_ce<8, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(kMaxRowCacheBytes)));
        opted_in = kMaxRowCacheBytes;
      }
      softmax_ce<8, true><<<rows, kThreads, smem, s>>>(losses, logits, targets, V, dloss, compute_grad);
    } else {
      softmax_ce<8, false><<<rows, kThreads, 0, s>>>(losses, logits, targets, V, dloss, compute_grad);
    }
  } else {
    softmax_ce<1, false><<<rows, kThreads, 0, s>>>(losses, logits, targets, V, dloss, compute_grad);
  }
  MLKV_LAUNCH_CHECK();
}

}  // namespace mlkv::cuda
