// Column sums over the N rows of a bf16 [N, C] matrix, deterministic (no float atomics):
//   bias gradient:          dbias[C] += Σ_n dout[n, :]
//   LayerNorm param grads:  dw[C] += Σ_n dout[n, :]·xhat[n, :],  db[C] += Σ_n dout[n, :]
//                           with xhat = (in − mean[n])·rstd[n]
//   GELU backward + bias:   din = gelu'(in)·dout (written as bf16), dbias[C] += Σ_n din: the MLP
//                           up-projection's bias gradient without a second read of din
// Pass 1: block (column tile, chunk of kRowsPerChunk rows) sums its rows in a fixed order and
// writes one fp32 partial row per chunk. Pass 2 adds the partial rows in a fixed order.
// The chunking depends only on (N, C), so the result is bitwise the same on every run and GPU.
#include "kernels/cuda/backend_ops.cuh"

namespace mlkv::cuda {

namespace {

constexpr int kRowsPerChunk = 64;
constexpr int kTx = 32, kTy = 8;  // threads along columns, along rows

// What colsum_partial sums: dout; dout and dout·xhat; or din = gelu'(in)·dout, which it also writes.
enum class Sum { dout, dout_xhat, gelu_din };

// part0[chunk, C] = Σ dout (or Σ din); part1[chunk, C] = Σ dout·xhat (dout_xhat only). VEC columns
// per thread. gelu_din: din rounded to bf16 as written is what is summed, the value bias_grad would
// read back, in the same order, so the fused sums are bitwise those of the two passes.
template <int VEC, Sum M>
__global__ void __launch_bounds__(kTx* kTy) colsum_partial(float* part0, float* part1, bf16* din, const bf16* dout,
                                                          const bf16* in, const float* mean, const float* rstd,
                                                          int64_t N, int C) {
  constexpr bool XHAT = M == Sum::dout_xhat, GELU = M == Sum::gelu_din;
  __shared__ float s0[kTy][kTx * VEC];
  __shared__ float s1[XHAT ? kTy : 1][kTx * VEC];
  const int col = (blockIdx.x * kTx + threadIdx.x) * VEC;
  const int64_t r0 = int64_t{blockIdx.y} * kRowsPerChunk;
  const int64_t r1 = min(N, r0 + kRowsPerChunk);
  float a0[VEC] = {}, a1[VEC] = {};
  if (col < C) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kTy) {
      float g[VEC], x[VEC];
      if constexpr (VEC == 8) {
        load8(dout + r * C + col, g);
        if constexpr (XHAT || GELU) load8(in + r * C + col, x);
      } else {
        g[0] = __bfloat162float(dout[r * C + col]);
        if constexpr (XHAT || GELU) x[0] = __bfloat162float(in[r * C + col]);
      }
      if constexpr (GELU) {  // g becomes din as stored, rounded to bf16 (din may alias dout: same element)
#pragma unroll
        for (int i = 0; i < VEC; ++i) g[i] = __bfloat162float(__float2bfloat16(g[i] * gelu_grad(x[i])));
        if constexpr (VEC == 8)
          store8(din + r * C + col, g);  // bf16 values already: stored exactly
        else
          din[r * C + col] = __float2bfloat16(g[0]);
      }
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        a0[i] += g[i];
        if constexpr (XHAT) a1[i] += g[i] * ((x[i] - mean[r]) * rstd[r]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    s0[threadIdx.y][threadIdx.x * VEC + i] = a0[i];
    if constexpr (XHAT) s1[threadIdx.y][threadIdx.x * VEC + i] = a1[i];
  }
  __syncthreads();
  // Each thread of the block now finalises columns of the tile, summing the kTy rows in order.
  for (int c = threadIdx.y * kTx + threadIdx.x; c < kTx * VEC; c += kTx * kTy) {
    const int gc = blockIdx.x * kTx * VEC + c;
    if (gc >= C) continue;
    float t0 = 0, t1 = 0;
#pragma unroll
    for (int y = 0; y < kTy; ++y) {
      t0 += s0[y][c];
      if constexpr (XHAT) t1 += s1[y][c];
    }
    part0[int64_t{blockIdx.y} * C + gc] = t0;
    if constexpr (XHAT) part1[int64_t{blockIdx.y} * C + gc] = t1;
  }
}

// out0[c] += Σ_chunk part0[chunk, c] (and out1 from part1 when given). Block (32 columns, kFy
// row groups): thread (x, y) adds chunks y, y + kFy, ... in order, then y = 0 adds the kFy group
// sums in order, so the order is fixed while kFy independent loads per column are in flight
// (one thread per column walking thousands of chunks was latency-bound: ~0.5 µs a chunk).
constexpr int kFy = 16;
__global__ void __launch_bounds__(32 * kFy)
    colsum_finish(float* out0, float* out1, const float* part0, const float* part1, int chunks, int C) {
  __shared__ float s0[kFy][33], s1[kFy][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  float t0 = 0, t1 = 0;
  if (c < C) {
#pragma unroll 4
    for (int k = threadIdx.y; k < chunks; k += kFy) {
      t0 += part0[int64_t{k} * C + c];
      if (out1) t1 += part1[int64_t{k} * C + c];
    }
  }
  s0[threadIdx.y][threadIdx.x] = t0;
  s1[threadIdx.y][threadIdx.x] = t1;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float a0 = 0, a1 = 0;
#pragma unroll
    for (int y = 0; y < kFy; ++y) a0 += s0[y][threadIdx.x], a1 += s1[y][threadIdx.x];
    out0[c] += a0;
    if (out1) out1[c] += a1;
  }
}

template <Sum M>
void colsum(float* out0, float* out1, bf16* din, const bf16* dout, const bf16* in, const float* mean,
            const float* rstd, int64_t N, int C, Scratch& scratch, cudaStream_t s) {
  if (N == 0 || C == 0) return;
  constexpr bool XHAT = M == Sum::dout_xhat;
  const int chunks = static_cast<int>(ceil_div(N, kRowsPerChunk));
  float* part0 = static_cast<float*>(scratch.get(sizeof(float) * size_t(chunks) * C * (XHAT ? 2 : 1)));
  float* part1 = XHAT ? part0 + size_t(chunks) * C : nullptr;
  const bool vec = C % 8 == 0 && aligned16(dout) && (M == Sum::dout || aligned16(in)) && (!din || aligned16(din));
  const dim3 block(kTx, kTy);
  if (vec) {
    const dim3 grid(static_cast<unsigned>(ceil_div(C, kTx * 8)), chunks);
    colsum_partial<8, M><<<grid, block, 0, s>>>(part0, part1, din, dout, in, mean, rstd, N, C);
  } else {
    const dim3 grid(static_cast<unsigned>(ceil_div(C, kTx)), chunks);
    colsum_partial<1, M><<<grid, block, 0, s>>>(part0, part1, din, dout, in, mean, rstd, N, C);
  }
  MLKV_LAUNCH_CHECK();
  colsum_finish<<<static_cast<unsigned>(ceil_div(C, 32)), dim3(32, kFy), 0, s>>>(out0, out1, part0, part1, chunks, C);
  MLKV_LAUNCH_CHECK();
}

}  // namespace

void add_partial_rows(float* out0, float* out1, const float* part0, const float* part1, int rows, int C,
                      cudaStream_t s) {
  colsum_finish<<<static_cast<unsigned>(ceil_div(C, 32)), dim3(32, kFy), 0, s>>>(out0, out1, part0, part1, rows, C);
  MLKV_LAUNCH_CHECK();
}

void bias_grad(float* dbias, const bf16* dout, int64_t N, int C, Scratch& scratch, cudaStream_t s) {
  colsum<Sum::dout>(dbias, nullptr, nullptr, dout, nullptr, nullptr, nullptr, N, C, scratch, s);
}

void gelu_backward_bias_grad(bf16* din, float* dbias, const bf16* in, const bf16* dout, int64_t N, int C,
                             Scratch& scratch, cudaStream_t s) {
  colsum<Sum::gelu_din>(dbias, nullptr, din, dout, in, nullptr, nullptr, N, C, scratch, s);
}

// Declared for layernorm.cu: db += Σ dout, dw += Σ dout·xhat.
void layernorm_param_grads(float* dw, float* db, const bf16* dout, const bf16* in, const float* mean,
                           const float* rstd, int64_t N, int C, Scratch& scratch, cudaStream_t s) {
  colsum<Sum::dout_xhat>(db, dw, nullptr, dout, in, mean, rstd, N, C, scratch, s);
}

}  // namespace mlkv::cuda
