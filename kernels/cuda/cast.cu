// Casts over n elements: fp32 → bf16 (round to nearest even) and bf16 → fp32 (exact).
// Used for uploading weights and reading activations back; 8 elements per thread when aligned.
#include "kernels/cuda/backend_ops.cuh"

namespace mlkv::cuda {

namespace {

__global__ void f32_to_bf16(bf16* out, const float* in, int64_t n, bool vec) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  int64_t done = 0;
  if (vec) {
    for (int64_t i = tid; i < n / 8; i += stride) {
      const float4 a = reinterpret_cast<const float4*>(in)[2 * i];
      const float4 b = reinterpret_cast<const float4*>(in)[2 * i + 1];
      const float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
      store8(out + 8 * i, f);
    }
    done = n / 8 * 8;
  }
  for (int64_t i = done + tid; i < n; i += stride) out[i] = __float2bfloat16(in[i]);
}

__global__ void bf16_to_f32(float* out, const bf16* in, int64_t n, bool vec) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  int64_t done = 0;
  if (vec) {
    for (int64_t i = tid; i < n / 8; i += stride) {
      float f[8];
      load8(in + 8 * i, f);
      reinterpret_cast<float4*>(out)[2 * i] = make_float4(f[0], f[1], f[2], f[3]);
      reinterpret_cast<float4*>(out)[2 * i + 1] = make_float4(f[4], f[5], f[6], f[7]);
    }
    done = n / 8 * 8;
  }
  for (int64_t i = done + tid; i < n; i += stride) out[i] = __bfloat162float(in[i]);
}

}  // namespace

void cast_f32_to_bf16(bf16* out, const float* in, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  const bool vec = aligned16(out) && aligned16(in);
  f32_to_bf16<<<grid_for(vec ? n / 8 + 1 : n, 256), 256, 0, s>>>(out, in, n, vec);
  MLKV_LAUNCH_CHECK();
}

void cast_bf16_to_f32(float* out, const bf16* in, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  const bool vec = aligned16(out) && aligned16(in);
  bf16_to_f32<<<grid_for(vec ? n / 8 + 1 : n, 256), 256, 0, s>>>(out, in, n, vec);
  MLKV_LAUNCH_CHECK();
}

}  // namespace mlkv::cuda
