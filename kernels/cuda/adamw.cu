// AdamW on n fp32 master weights (decoupled weight decay, Loshchilov & Hutter), elementwise:
//   g = grad·grad_scale;  m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²
//   master −= lr·( (m/(1−β1^t)) / (√(v/(1−β2^t)) + eps) + wd·master );  act_params = bf16(master)
// Same expression order as the CPU reference. Refreshing the bf16 compute copy here saves a
// separate cast pass over the parameters.
#include <cmath>

#include "kernels/cuda/backend_ops.cuh"

namespace mlkv::cuda {

namespace {

__global__ void adamw_kernel(float* master, bf16* act, const float* grad, float* m, float* v, int64_t n, float lr,
                             float b1, float b2, float eps, float wd, float bc1, float bc2, float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const float g = grad[i] * scale;
    const float mi = b1 * m[i] + (1.0f - b1) * g;
    const float vi = b2 * v[i] + (1.0f - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi / bc1, vhat = vi / bc2;
    const float p = master[i] - lr * (mhat / (sqrtf(vhat) + eps) + wd * master[i]);
    master[i] = p;
    if (act) act[i] = __float2bfloat16(p);
  }
}

}  // namespace

void adamw_update(float* master, bf16* act_params, const float* grad, float* m, float* v, int64_t n,
                  const AdamwStep& st, cudaStream_t s) {
  if (n == 0) return;
  const float bc1 = 1.0f - std::pow(st.beta1, static_cast<float>(st.t));
  const float bc2 = 1.0f - std::pow(st.beta2, static_cast<float>(st.t));
  adamw_kernel<<<grid_for(n, 256), 256, 0, s>>>(master, act_params, grad, m, v, n, st.lr, st.beta1, st.beta2, st.eps,
                                                st.weight_decay, bc1, bc2, st.grad_scale);
  MLKV_LAUNCH_CHECK();
}

}  // namespace mlkv::cuda
