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

// PAIR: a second output out2 = xhat·w2 + b2 from the same statistics (a GPT-NeoX layer's two
// LayerNorms both normalise the residual x: one read of x and one set of statistics serve both).
template <int VEC, bool PAIR>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    ln_forward(bf16* out, bf16* out2, float* mean, float* rstd, const bf16* in, const bf16* w, const bf16* b,
               const bf16* w2, const bf16* b2, int64_t N, int C, float eps) {
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
      for (int i = 0; i < VEC; ++i) f[i] = (f[i] - m) * r;  // xhat
      if constexpr (PAIR) {
        float w2f[VEC], b2f[VEC], o2[VEC];
        load_vec<VEC>(w2 + c, w2f);
        load_vec<VEC>(b2 + c, b2f);
#pragma unroll
        for (int i = 0; i < VEC; ++i) o2[i] = f[i] * w2f[i] + b2f[i];
        store_vec<VEC>(out2 + row * C + c, o2);
      }
#pragma unroll
      for (int i = 0; i < VEC; ++i) f[i] = f[i] * wf[i] + bf[i];
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
// The pair backward keeps twice the per-column sums in registers: at most 512 threads (C ≤ 4096)
// so that the compiler may give each thread 128 registers instead of spilling at 64.
constexpr int kPairMaxC = 4096;

// din += ..., and partial dw/db of this block's rows into part[0..1][blockIdx.x, C]. PAIR: a second
// LayerNorm (dout2 through w2) of the same x and statistics; the input gradient is linear in
// g = dout·w, so one pass with g = dout·w + dout2·w2 gives both, and part[2..3] take dw2/db2.
template <bool PAIR>
__global__ void __launch_bounds__(PAIR ? kPairMaxC / 8 : 1024)
    ln_backward_fused(bf16* din, float* part, const bf16* dout, const bf16* dout2, const bf16* in, const bf16* w,
                      const bf16* w2, const float* mean, const float* rstd, int64_t N, int C) {
  __shared__ float2 red[2][32];  // per-warp (Σg, Σg·xhat), double-buffered by row parity: one barrier a row
  const int c = threadIdx.x * 8, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const bool active = c < C;
  float wf[8] = {}, dw[8] = {}, db[8] = {};
  float w2f[8] = {}, dw2[8] = {}, db2[8] = {};
  if (active) load8(w + c, wf);
  if (PAIR && active) load8(w2 + c, w2f);
  const int64_t r0 = int64_t{blockIdx.x} * kRowsPerBlock, r1 = min(N, r0 + kRowsPerBlock);
  for (int64_t r = r0; r < r1; ++r) {
    float x[8] = {}, g[8] = {}, g2[8] = {}, di[8] = {};
    if (active) {  // all loads issued before the reduction needs any of them
      load8(in + r * C + c, x);
      load8(dout + r * C + c, g);
      if constexpr (PAIR) load8(dout2 + r * C + c, g2);
      load8(din + r * C + c, di);
    }
    const float m = mean[r], rs = rstd[r];
    float sg = 0, sgx = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      x[k] = (x[k] - m) * rs;  // xhat
      float gw = g[k] * wf[k];
      dw[k] += g[k] * x[k];
      db[k] += g[k];
      if constexpr (PAIR) {
        gw += g2[k] * w2f[k];
        dw2[k] += g2[k] * x[k];
        db2[k] += g2[k];
      }
      g[k] = gw;
      sg += gw;
      sgx += gw * x[k];
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
      for (int k = 0; k < 8; ++k) di[k] += rs * (g[k] - mg - x[k] * mgx);
      store8(din + r * C + c, di);
    }
  }
  if (active) {
    const int64_t at = int64_t{blockIdx.x} * C + c, plane = int64_t{gridDim.x} * C;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      part[at + k] = dw[k];
      part[plane + at + k] = db[k];
      if constexpr (PAIR) {
        part[2 * plane + at + k] = dw2[k];
        part[3 * plane + at + k] = db2[k];
      }
    }
  }
}

int ln_grid(int64_t N) { return grid_for(N * 32, 32 * kWarpsPerBlock); }
int ln_backward_threads(int C) { return static_cast<int>(ceil_div(C / 8, 32) * 32); }  // a thread per 8 columns

}  // namespace

void layernorm_forward(bf16* out, float* mean, float* rstd, const bf16* in, const bf16* w, const bf16* b,
                       int64_t N, int C, float eps, cudaStream_t s) {
  if (N == 0) return;
  const bool vec = C % 8 == 0 && aligned16(out) && aligned16(in) && aligned16(w) && aligned16(b);
  if (vec)
    ln_forward<8, false><<<ln_grid(N), 32 * kWarpsPerBlock, 0, s>>>(out, nullptr, mean, rstd, in, w, b, nullptr,
                                                                     nullptr, N, C, eps);
  else
    ln_forward<1, false><<<ln_grid(N), 32 * kWarpsPerBlock, 0, s>>>(out, nullptr, mean, rstd, in, w, b, nullptr,
                                                                     nullptr, N, C, eps);
  MLKV_LAUNCH_CHECK();
}

void layernorm_backward(bf16* din, float* dw, float* db, const bf16* dout, const bf16* in, const bf16* w,
                        const float* mean, const float* rstd, int64_t N, int C, Scratch& scratch, cudaStream_t s) {
  if (N == 0) return;
  const bool vec = C % 8 == 0 && aligned16(din) && aligned16(dout) && aligned16(in) && aligned16(w);
  if (vec && C <= 8 * 1024) {
    const int blocks = static_cast<int>(ceil_div(N, kRowsPerBlock));
    auto* part = static_cast<float*>(scratch.get(2 * sizeof(float) * size_t(blocks) * C));
    ln_backward_fused<false><<<blocks, ln_backward_threads(C), 0, s>>>(din, part, dout, nullptr, in, w, nullptr,
                                                                       mean, rstd, N, C);
    MLKV_LAUNCH_CHECK();
    add_partial_rows(dw, db, part, part + size_t(blocks) * C, blocks, C, s);
    return;
  }
  if (vec) ln_backward_input<8><<<ln_grid(N), 32 * kWarpsPerBlock, 0, s>>>(din, dout, in, w, mean, rstd, N, C);
  else ln_backward_input<1><<<ln_grid(N), 32 * kWarpsPerBlock, 0, s>>>(din, dout, in, w, mean, rstd, N, C);
  MLKV_LAUNCH_CHECK();
  layernorm_param_grads(dw, db, dout, in, mean, rstd, N, C, scratch, s);
}

bool layernorm_pair_forward(bf16* out1, bf16* out2, float* mean, float* rstd, const bf16* in, const bf16* w1,
                            const bf16* b1, const bf16* w2, const bf16* b2, int64_t N, int C, float eps,
                            cudaStream_t s) {
  const bool vec = C % 8 == 0 && aligned16(out1) && aligned16(out2) && aligned16(in) && aligned16(w1) &&
                   aligned16(b1) && aligned16(w2) && aligned16(b2);
  if (!vec) return false;
  if (N == 0) return true;
  ln_forward<8, true><<<ln_grid(N), 32 * kWarpsPerBlock, 0, s>>>(out1, out2, mean, rstd, in, w1, b1, w2, b2, N, C,
                                                                  eps);
  MLKV_LAUNCH_CHECK();
  return true;
}

bool layernorm_pair_backward(bf16* din, float* dw1, float* db1, float* dw2, float* db2, const bf16* dout1,
                             const bf16* dout2, const bf16* in, const bf16* w1, const bf16* w2, const float* mean,
                             const float* rstd, int64_t N, int C, Scratch& scratch, cudaStream_t s) {
  const bool vec = C % 8 == 0 && C <= kPairMaxC && aligned16(din) && aligned16(dout1) && aligned16(dout2) &&
                   aligned16(in) && aligned16(w1) && aligned16(w2);
  if (!vec) return false;
  if (N == 0) return true;
  const int blocks = static_cast<int>(ceil_div(N, kRowsPerBlock));
  const size_t plane = size_t(blocks) * C;
  auto* part = static_cast<float*>(scratch.get(4 * sizeof(float) * plane));
  ln_backward_fused<true><<<blocks, ln_backward_threads(C), 0, s>>>(din, part, dout1, dout2, in, w1, w2, mean, rstd,
                                                                    N, C);
  MLKV_LAUNCH_CHECK();
  add_partial_rows(dw1, db1, part, part + plane, blocks, C, s);
  add_partial_rows(dw2, db2, part + 2 * plane, part + 3 * plane, blocks, C, s);
  return true;
}

}  // namespace mlkv::cuda
