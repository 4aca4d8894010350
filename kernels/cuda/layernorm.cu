// LayerNorm over rows of C (bf16 in/out, fp32 statistics):
//   forward:  out[N, C] = (x − mean)·rstd·w + b;  mean[N], rstd[N] saved
//   backward: din[N, C] += rstd·(g − mean(g) − xhat·mean(g·xhat)) with g = dout·w, xhat = (x − mean)·rstd
//             dw[C] += Σ_n dout·xhat,  db[C] += Σ_n dout   (deterministic column sums, colsum.cu)
// One warp per row: C is at most a few thousand, so a row (≤ 10 KB) stays in L1 across the
// passes over it, and the row reductions are warp shuffles with no shared memory or barriers.
#include "kernels/cuda/backend_ops.cuh"

namespace mlkv::cuda {

namespace {

constexpr int kWarpsPerBlock = 8;

// Loads VEC consecutive elements at p (VEC 8: one 16-byte load).
template <int VEC>
__device__ __forceinline__ void load_vec(const bf16* p, float (&f)[VEC]) {
  if constexpr (VEC == 8) load8(p, f);
  else f[0] = __bfloat162float(*p);
}
template <int VEC>
__device__ __forceinline__ void store_vec(bf16* p, const float (&f)[VEC]) {
  if constexpr (VEC == 8) store8(p, f);
  else *p = __float2bfloat16(f[0]);
}

template <int VEC>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    ln_forward(bf16* out, float* mean, float* rstd, const bf16* in, const bf16* w, const bf16* b, int64_t N, int C,
               float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t{gridDim.x} * kWarpsPerBlock;
  for (int64_t row = int64_t{blockIdx.x} * kWarpsPerBlock + (threadIdx.x >> 5); row < N; row += warps) {
    const bf16* x = in + row * C;
    float s = 0;
    for (int c = lane * VEC; c < C; c += 32 * VEC) {
      float f[VEC];
      load_vec<VEC>(x + c, f);
#pragma unroll
      for (int i = 0; i < VEC; ++i) s += f[i];
    }
    const float m = warp_sum(s) / C;
    // Two-pass variance: Σ(x − m)² does not cancel catastrophically as E[x²] − m² can.
    float v = 0;
    for (int c = lane * VEC; c < C; c += 32 * VEC) {
      float f[VEC];
      load_vec<VEC>(x + c, f);
#pragma unroll
      for (int i = 0; i < VEC; ++i) v += (f[i] - m) * (f[i] - m);
    }
    const float r = rsqrtf(warp_sum(v) / C + eps);
    for (int c = lane * VEC; c < C; c += 32 * VEC) {
      float f[VEC], wf[VEC], bf[VEC];
      load_vec<VEC>(x + c, f);
      load_vec<VEC>(w + c, wf);
      load_vec<VEC>(b + c, bf);
#pragma unroll
      for (int i = 0; i < VEC; ++i) f[i] = (f[i] - m) * r * wf[i] + bf[i];
      store_vec<VEC>(out + row * C + c, f);
    }
    if (lane == 0) {
      mean[row] = m;
      rstd[row] = r;
    }
  }
}

template <int VEC>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    ln_backward_input(bf16* din, const bf16* dout, const bf16* in, const bf16* w, const float* mean,
                      const float* rstd, int64_t N, int C) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t{gridDim.x} * kWarpsPerBlock;
  for (int64_t row = int64_t{blockIdx.x} * kWarpsPerBlock + (threadIdx.x >> 5); row < N; row += warps) {
    const bf16* x = in + row * C;
    const bf16* go = dout + row * C;
    const float m = mean[row], r = rstd[row];
    float sg = 0, sgx = 0;
    for (int c = lane * VEC; c < C; c += 32 * VEC) {
      float xf[VEC], gf[VEC], wf[VEC];
      load_vec<VEC>(x + c, xf);
      load_vec<VEC>(go + c, gf);
      load_vec<VEC>(w + c, wf);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float g = gf[i] * wf[i];
        sg += g;
        sgx += g * (xf[i] - m) * r;
      }
    }
    const float mg = warp_sum(sg) / C, mgx = warp_sum(sgx) / C;
    for (int c = lane * VEC; c < C; c += 32 * VEC) {
      float xf[VEC], gf[VEC], wf[VEC], df[VEC];
      load_vec<VEC>(x + c, xf);
      load_vec<VEC>(go + c, gf);
      load_vec<VEC>(w + c, wf);
      load_vec<VEC>(din + row * C + c, df);
#pragma unroll
      for (int i = 0; i < VEC; ++i) df[i] += r * (gf[i] * wf[i] - mg - (xf[i] - m) * r * mgx);
      store_vec<VEC>(din + row * C + c, df);
    }
  }
}

int ln_grid(int64_t N) { return grid_for(N * 32, 32 * kWarpsPerBlock); }

}  // namespace

void layernorm_forward(bf16* out, float* mean, float* rstd, const bf16* in, const bf16* w, const bf16* b,
                       int64_t N, int C, float eps, cudaStream_t s) {
  if (N == 0) return;
  const bool vec = C % 8 == 0 && aligned16(out) && aligned16(in) && aligned16(w) && aligned16(b);
  if (vec) ln_forward<8><<<ln_grid(N), 32 * kWarpsPerBlock, 0, s>>>(out, mean, rstd, in, w, b, N, C, eps);
  else ln_forward<1><<<ln_grid(N), 32 * kWarpsPerBlock, 0, s>>>(out, mean, rstd, in, w, b, N, C, eps);
  MLKV_LAUNCH_CHECK();
}

void layernorm_backward(bf16* din, float* dw, float* db, const bf16* dout, const bf16* in, const bf16* w,
                        const float* mean, const float* rstd, int64_t N, int C, Scratch& scratch, cudaStream_t s) {
  if (N == 0) return;
  const bool vec = C % 8 == 0 && aligned16(din) && aligned16(dout) && aligned16(in) && aligned16(w);
  if (vec) ln_backward_input<8><<<ln_grid(N), 32 * kWarpsPerBlock, 0, s>>>(din, dout, in, w, mean, rstd, N, C);
  else ln_backward_input<1><<<ln_grid(N), 32 * kWarpsPerBlock, 0, s>>>(din, dout, in, w, mean, rstd, N, C);
  MLKV_LAUNCH_CHECK();
  layernorm_param_grads(dw, db, dout, in, mean, rstd, N, C, scratch, s);
}

}  // namespace mlkv::cuda
