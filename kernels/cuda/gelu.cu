// Elementwise bf16 ops over n elements (computed in fp32):
//   gelu forward:   out = x·Φ(x)                 (exact erf GELU, as Pythia; not the tanh form)
//   gelu backward:  din = dout·(Φ(x) + x·φ(x))
//   residual add:   y += x
// Memory-bound: 16-byte vectors (8 bf16) per thread when the pointers allow, a scalar tail.
#include "kernels/cuda/backend_ops.cuh"

namespace mlkv::cuda {

namespace {

__device__ __forceinline__ float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// out[i] = f(a[i], b[i]) for i < n; b may be unused. VEC-wide when `vec`, scalar otherwise.
template <typename F>
__global__ void map2(bf16* out, const bf16* a, const bf16* b, int64_t n, bool vec, F f) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  int64_t done = 0;
  if (vec) {
    const int64_t nv = n / 8;
    for (int64_t i = tid; i < nv; i += stride) {
      float x[8], y[8], r[8];
      load8(a + i * 8, x);
      if (b) load8(b + i * 8, y);
#pragma unroll
      for (int k = 0; k < 8; ++k) r[k] = f(x[k], b ? y[k] : 0.0f);
      store8(out + i * 8, r);
    }
    done = nv * 8;
  }
  for (int64_t i = done + tid; i < n; i += stride)
    out[i] = __float2bfloat16(f(__bfloat162float(a[i]), b ? __bfloat162float(b[i]) : 0.0f));
}

template <typename F>
void launch_map2(bf16* out, const bf16* a, const bf16* b, int64_t n, cudaStream_t s, F f) {
  if (n == 0) return;
  const bool vec = aligned16(out) && aligned16(a) && (!b || aligned16(b));
  map2<<<grid_for(vec ? n / 8 + 1 : n, 256), 256, 0, s>>>(out, a, b, n, vec, f);
  MLKV_LAUNCH_CHECK();
}

struct GeluFwd {
  __device__ float operator()(float x, float) const { return gelu(x); }
};
struct GeluBwd {
  __device__ float operator()(float x, float g) const { return g * gelu_grad(x); }
};
struct Add {
  __device__ float operator()(float y, float x) const { return y + x; }
};

}  // namespace

void gelu_forward(bf16* out, const bf16* in, int64_t n, cudaStream_t s) { launch_map2(out, in, nullptr, n, s, GeluFwd{}); }
void gelu_backward(bf16* din, const bf16* in, const bf16* dout, int64_t n, cudaStream_t s) {
  launch_map2(din, in, dout, n, s, GeluBwd{});
}
void add_inplace(bf16* y, const bf16* x, int64_t n, cudaStream_t s) { launch_map2(y, y, x, n, s, Add{}); }

}  // namespace mlkv::cuda
