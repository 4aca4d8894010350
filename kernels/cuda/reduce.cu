// Σ x[i]² or Σ x[i] over n fp32 values, in double, deterministic (global gradient norm, loss sums):
// pass 1: a fixed number of blocks (a function of n only) each sum a strided slice and reduce it
// in a fixed tree; pass 2: one block adds the block partials in a fixed tree. The host reads the
// double back, so the call blocks until the stream reaches it.
#include <algorithm>

#include "kernels/cuda/backend_ops.cuh"

namespace mlkv::cuda {

namespace {

constexpr int kThreads = 256, kMaxBlocks = 1024;

__device__ double block_sum(double v) {
  __shared__ double sm[32];
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) sm[threadIdx.x >> 5] = v;
  __syncthreads();
  v = threadIdx.x < blockDim.x / 32 ? sm[threadIdx.x] : 0.0;
  if (threadIdx.x < 32) v = warp_sum(v);
  return v;  // valid in thread 0
}

__global__ void partial_sums(double* partial, const float* x, int64_t n, bool squares) {
  double acc = 0;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const double t = x[i];
    acc += squares ? t * t : t;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void final_sum(double* out, const double* partial, int count) {
  double acc = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) *out = acc;
}

}  // namespace

double reduce_sum(const float* x, int64_t n, bool squares, Scratch& scratch, cudaStream_t s) {
  if (n == 0) return 0.0;
  const int blocks = static_cast<int>(std::min<int64_t>(kMaxBlocks, ceil_div(n, kThreads * 16)));
  auto* partial = static_cast<double*>(scratch.get(sizeof(double) * (kMaxBlocks + 1)));
  partial_sums<<<blocks, kThreads, 0, s>>>(partial + 1, x, n, squares);
  MLKV_LAUNCH_CHECK();
  final_sum<<<1, kMaxBlocks, 0, s>>>(partial, partial + 1, blocks);
  MLKV_LAUNCH_CHECK();
  double result = 0;
  MLKV_CUDA_CHECK(cudaMemcpyAsync(&result, partial, sizeof(double), cudaMemcpyDeviceToHost, s));
  MLKV_CUDA_CHECK(cudaStreamSynchronize(s));
  return result;
}

}  // namespace mlkv::cuda
