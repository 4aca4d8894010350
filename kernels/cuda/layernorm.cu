// LayerNorm over rows of C (bf16 in/out, fp32 statistics):
//   forward:  out[N, C] = (x − mean)·rstd·w + b;  mean[N], rstd[N] saved
//   backward: din[N, C] += rstd·(g − mean(g) − xhat·mean(g·xhat)) with g = dout·w, xhat = (x − mean)·rstd
//             dw[C] += Σ_n dout·xhat,  db[C] += Σ_n dout   (deterministic: fixed-order partial sums)
// Forward: one warp per row. C is at most a few thousand, so a row (≤ 10 KB) stays in L1 across
// the passes over it, and the row reductions are warp shuffles with no barriers.
// Backward (C % 8 == 0, C ≤ 8192): one block per chunk of kRowsPerBlock rows, a thread per 8
// columns, so each thread keeps its columns' dw/db partial sums in registers while walking the
// rows: x, dout and din cross DRAM once (a separate column-sum pass read x and dout twice: 164 µs
// against a 67 µs floor at 32768×768). Block partials are then added in block order. Other C take
// the warp-per-row input gradient plus colsum.cu's column sums.
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

constexpr int kRowsPerBlock = 16;

// din += ..., and partial dw/db of this block's rows into part_dw/part_db[blockIdx.x, C].
__global__ void __launch_bounds__(1024)
    ln_backward_fused(bf16* din, float* part_dw, float* part_db, const bf16* dout, const bf16* in, const bf16* w,
                      const float* mean, const float* rstd, int64_t N, int C) {
  __shared__ float2 red[2][32];  // per-warp (Σg, Σg·xhat), double-buffered by row parity: one barrier a row
  const int c = threadIdx.x * 8, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const bool active = c < C;
  float wf[8] = {}, dw[8] = {}, db[8] = {};
  if (active) load8(w + c, wf);
  const int64_t r0 = int64_t{blockIdx.x} * kRowsPerBlock, r1 = min(N, r0 + kRowsPerBlock);
  for (int64_t r = r0; r < r1; ++r) {
    float x[8] = {}, g[8] = {}, di[8] = {};
    if (active) {  // all three loads issued before the reduction needs any of them
      load8(in + r * C + c, x);
      load8(dout + r * C + c, g);
      load8(din + r * C + c, di);
    }
    const float m = mean[r], rs = rstd[r];
    float sg = 0, sgx = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      x[k] = (x[k] - m) * rs;  // xhat
      const float gw = g[k] * wf[k];
      sg += gw;
      sgx += gw * x[k];
      dw[k] += g[k] * x[k];
      db[k] += g[k];
    }
    sg = warp_sum(sg);
    sgx = warp_sum(sgx);
    const int buf = static_cast<int>(r & 1);
    if (lane == 0) red[buf][warp] = make_float2(sg, sgx);
    __syncthreads();
    float tg = 0, tgx = 0;
    for (int i = 0; i < warps; ++i) {  // every thread sums the warps in the same order
      tg += red[buf][i].x;
      tgx += red[buf][i].y;
    }
    const float mg = tg / C, mgx = tgx / C;
    if (active) {
#pragma unroll
      for (int k = 0; k < 8; ++k) di[k] += rs * (g[k] * wf[k] - mg - x[k] * mgx);
      store8(din + r * C + c, di);
    }
  }
  if (active) {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      part_dw[int64_t{blockIdx.x} * C + c + k] = dw[k];
      part_db[int64_t{blockIdx.x} * C + c + k] = db[k];
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
  if (vec && C <= 8 * 1024) {
    const int blocks = static_cast<int>(ceil_div(N, kRowsPerBlock));
    auto* part = static_cast<float*>(scratch.get(2 * sizeof(float) * size_t(blocks) * C));
    const int threads = static_cast<int>(ceil_div(C / 8, 32) * 32);
    ln_backward_fused<<<blocks, threads, 0, s>>>(din, part, part + size_t(blocks) * C, dout, in, w, mean, rstd, N, C);
    MLKV_LAUNCH_CHECK();
    add_partial_rows(dw, db, part, part + size_t(blocks) * C, blocks, C, s);
    return;
  }
  if (vec) ln_backward_input<8><<<ln_grid(N), 32 * kWarpsPerBlock, 0, s>>>(din, dout, in, w, mean, rstd, N, C);
  else ln_backward_input<1><<<ln_grid(N), 32 * kWarpsPerBlock, 0, s>>>(din, dout, in, w, mean, rstd, N, C);
  MLKV_LAUNCH_CHECK();
  layernorm_param_grads(dw, db, dout, in, mean, rstd, N, C, scratch, s);
}

}  // namespace mlkv::cuda
