// Casts over n elements: fp32 → bf16 (round to nearest even) and bf16 → fp32 (exact, assigned or
// added). Used for uploading weights, reading activations back, and adding the cuDNN attention's
// bf16 dK/dV into the fp32 group sums; 8 elements per thread when aligned.
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

// out = in, or out += in when accumulate.
__global__ void bf16_to_f32(float* out, const bf16* in, int64_t n, bool vec, bool accumulate) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  int64_t done = 0;
  if (vec) {
    for (int64_t i = tid; i < n / 8; i += stride) {
      float f[8];
      load8(in + 8 * i, f);
      float4* o = reinterpret_cast<float4*>(out) + 2 * i;
      float4 a = make_float4(f[0], f[1], f[2], f[3]), b = make_float4(f[4], f[5], f[6], f[7]);
      if (accumulate) {
        const float4 a0 = o[0], b0 = o[1];
        a = make_float4(a0.x + a.x, a0.y + a.y, a0.z + a.z, a0.w + a.w);
        b = make_float4(b0.x + b.x, b0.y + b.y, b0.z + b.z, b0.w + b.w);
      }
      o[0] = a;
      o[1] = b;
    }
    done = n / 8 * 8;
  }
  for (int64_t i = done + tid; i < n; i += stride) out[i] = (accumulate ? out[i] : 0.0f) + __bfloat162float(in[i]);
}

void launch_bf16_to_f32(float* out, const bf16* in, int64_t n, bool accumulate, cudaStream_t s) {
  if (n == 0) return;
  const bool vec = aligned16(out) && aligned16(in);
  bf16_to_f32<<<grid_for(vec ? n / 8 + 1 : n, 256), 256, 0, s>>>(out, in, n, vec, accumulate);
  MLKV_LAUNCH_CHECK();
}

}  // namespace

void cast_f32_to_bf16(bf16* out, const float* in, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  const bool vec = aligned16(out) && aligned16(in);
  f32_to_bf16<<<grid_for(vec ? n / 8 + 1 : n, 256), 256, 0, s>>>(out, in, n, vec);
  MLKV_LAUNCH_CHECK();
}

void cast_bf16_to_f32(float* out, const bf16* in, int64_t n, cudaStream_t s) {
  launch_bf16_to_f32(out, in, n, false, s);
}

void add_bf16_to_f32(float* out, const bf16* in, int64_t n, cudaStream_t s) { launch_bf16_to_f32(out, in, n, true, s); }

}  // namespace mlkv::cuda
