// CUDA bodies of the tensor-parallel ops (parallel/tp_ops.h): bf16 activations, fp32 math.
// Cross-entropy: one block per row, as the backend's fused kernel, split at the two points where
// the tensor-parallel group must agree on the row's max and its sum of exponentials.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <string>

#include "core/errors.h"
#include "parallel/tp_ops_cuda.h"

namespace mlkv::parallel::cuda_tp {

namespace {

using bf16 = __nv_bfloat16;
constexpr int kThreads = 512;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string("tensor-parallel kernel ") + what + ": " + cudaGetErrorString(e));
}
cudaStream_t S(void* s) { return static_cast<cudaStream_t>(s); }

// One thread per VEC consecutive elements of a row (C % VEC == 0): 16-byte loads when VEC = 8.
template <int VEC>
__global__ void add_residual_biases_kernel(bf16* y, const bf16* x, const bf16* b1, const bf16* b2, int64_t N, int C) {
  const int64_t total = N * C / VEC;
  const int cv = C / VEC;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t e = i * VEC;
    const int c = static_cast<int>(i % cv) * VEC;
    bf16 yv[VEC], xv[VEC], p[VEC], q[VEC];
    if constexpr (VEC == 8) {
      *reinterpret_cast<uint4*>(yv) = *reinterpret_cast<const uint4*>(y + e);
      *reinterpret_cast<uint4*>(xv) = *reinterpret_cast<const uint4*>(x + e);
      *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(b1 + c);
      *reinterpret_cast<uint4*>(q) = *reinterpret_cast<const uint4*>(b2 + c);
    } else {
      yv[0] = y[e], xv[0] = x[e], p[0] = b1[c], q[0] = b2[c];
    }
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      yv[k] = __float2bfloat16(__bfloat162float(yv[k]) + __bfloat162float(xv[k]) + __bfloat162float(p[k]) +
                               __bfloat162float(q[k]));
    if constexpr (VEC == 8) *reinterpret_cast<uint4*>(y + e) = *reinterpret_cast<const uint4*>(yv);
    else y[e] = yv[0];
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <bool kMax>
__device__ float block_reduce(float v) {
  __shared__ float part[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? fmaxf(v, w) : v + w;
  }
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < kThreads / 32 ? part[threadIdx.x] : (kMax ? -FLT_MAX : 0.0f);
    for (int o = 16; o > 0; o >>= 1) {
      const float w = __shfl_xor_sync(0xffffffffu, v, o);
      v = kMax ? fmaxf(v, w) : v + w;
    }
  }
  return v;  // valid in thread 0
}

__global__ void ce_max_kernel(float* row_max, const bf16* logits, int64_t Vl) {
  const bf16* row = logits + blockIdx.x * Vl;
  float m = -FLT_MAX;
  for (int64_t j = threadIdx.x; j < Vl; j += kThreads) m = fmaxf(m, __bfloat162float(row[j]));
  m = block_reduce<true>(m);
  if (threadIdx.x == 0) row_max[blockIdx.x] = m;
}

__global__ void ce_sums_kernel(float* sums, const bf16* logits, const float* row_max, const int32_t* targets,
                               int64_t N, int64_t Vl, int64_t v0) {
  const int64_t n = blockIdx.x;
  const bf16* row = logits + n * Vl;
  const float m = row_max[n];
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < Vl; j += kThreads) s += __expf(__bfloat162float(row[j]) - m);
  s = block_reduce<false>(s);
  if (threadIdx.x == 0) {
    sums[n] = s;
    const int64_t t = int64_t{targets[n]} - v0;
    sums[N + n] = (targets[n] >= 0 && t >= 0 && t < Vl) ? __bfloat162float(row[t]) : 0.0f;
  }
}

__global__ void ce_finish_kernel(float* losses, bf16* logits, const float* row_max, const float* sums,
                                 const int32_t* targets, int64_t N, int64_t Vl, int64_t v0, float dloss,
                                 bool compute_grad) {
  const int64_t n = blockIdx.x;
  bf16* row = logits + n * Vl;
  const int32_t target = targets[n];
  if (target < 0) {
    if (threadIdx.x == 0) losses[n] = 0.0f;
    if (compute_grad)
      for (int64_t j = threadIdx.x; j < Vl; j += kThreads) row[j] = __float2bfloat16(0.0f);
    return;
  }
  const float m = row_max[n], log_denom = logf(sums[n]);
  if (threadIdx.x == 0) losses[n] = log_denom + m - sums[N + n];
  if (!compute_grad) return;
  const int64_t t = int64_t{target} - v0;
  for (int64_t j = threadIdx.x; j < Vl; j += kThreads) {
    float g = dloss * __expf(__bfloat162float(row[j]) - m - log_denom);
    if (j == t) g -= dloss;
    row[j] = __float2bfloat16(g);
  }
}

int blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<int>(b < 4096 ? (b < 1 ? 1 : b) : 4096);
}

}  // namespace

void add_residual_biases(void* y, const void* x, const void* b1, const void* b2, int64_t N, int C, void* s) {
  if (N * C == 0) return;
  auto* yy = static_cast<bf16*>(y);
  auto *xx = static_cast<const bf16*>(x), *p = static_cast<const bf16*>(b1), *q = static_cast<const bf16*>(b2);
  if (C % 8 == 0 && aligned16(y) && aligned16(x) && aligned16(b1) && aligned16(b2))
    add_residual_biases_kernel<8><<<blocks_for(N * C / 8, 256), 256, 0, S(s)>>>(yy, xx, p, q, N, C);
  else
    add_residual_biases_kernel<1><<<blocks_for(N * C, 256), 256, 0, S(s)>>>(yy, xx, p, q, N, C);
  check(cudaGetLastError(), "add_residual_biases");
}

void ce_local_max(float* row_max, const void* logits, int64_t N, int64_t Vl, void* s) {
  if (N == 0) return;
  ce_max_kernel<<<static_cast<unsigned>(N), kThreads, 0, S(s)>>>(row_max, static_cast<const bf16*>(logits), Vl);
  check(cudaGetLastError(), "ce_local_max");
}

void ce_local_sums(float* sums, const void* logits, const float* row_max, const int32_t* targets, int64_t N,
                   int64_t Vl, int64_t v0, void* s) {
  if (N == 0) return;
  ce_sums_kernel<<<static_cast<unsigned>(N), kThreads, 0, S(s)>>>(sums, static_cast<const bf16*>(logits), row_max,
                                                                    targets, N, Vl, v0);
  check(cudaGetLastError(), "ce_local_sums");
}

void ce_finish(float* losses, void* logits, const float* row_max, const float* sums, const int32_t* targets,
               int64_t N, int64_t Vl, int64_t v0, float dloss, bool compute_grad, void* s) {
  if (N == 0) return;
  ce_finish_kernel<<<static_cast<unsigned>(N), kThreads, 0, S(s)>>>(losses, static_cast<bf16*>(logits), row_max, sums,
                                                                      targets, N, Vl, v0, dloss, compute_grad);
  check(cudaGetLastError(), "ce_finish");
}

}  // namespace mlkv::parallel::cuda_tp
