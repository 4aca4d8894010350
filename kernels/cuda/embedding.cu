// Token embedding (bf16 table, fp32 gradient):
//   forward:  out[N, d] = wte[tokens[n], :]
//   backward: dwte[V, d] += Σ_{n: tokens[n] = v} dout[n, :]   for every v, deterministically.
// The backward must not use float atomics (DESIGN §3b), and the host may not bucket tokens each
// step. So, on the device: a stable radix sort of (token, position) pairs (CUB) turns the batch
// into a token → positions CSR: equal tokens become contiguous runs, positions ascending within a
// run. The sorted order is then cut into fixed chunks of kChunk entries, one warp each, which sum
// their rows in order: a run wholly inside a chunk is added to its dwte row directly; a run that
// crosses chunk boundaries leaves one fp32 partial per chunk, and the warp of the chunk where it
// starts adds those partials in chunk order. Every dwte row is written by one warp with a fixed
// summation order (bitwise reproducible), and no warp walks more than kChunk rows, so a frequent
// token (a long run) costs no more latency than any other. The sort touches only N keys.
#include <cub/device/device_radix_sort.cuh>

#include "core/errors.h"
#include "kernels/cuda/backend_ops.cuh"

namespace mlkv::cuda {

namespace {

template <int VEC>
__global__ void embed_forward(bf16* out, const int32_t* tokens, const bf16* wte, int64_t N, int d) {
  const int vecs = d / VEC;
  const int64_t total = N * vecs;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t n = i / vecs;
    const int c = static_cast<int>(i - n * vecs) * VEC;
    const bf16* src = wte + int64_t{tokens[n]} * d + c;
    bf16* dst = out + n * d + c;
    if constexpr (VEC == 8) *reinterpret_cast<Bf16x8*>(dst) = *reinterpret_cast<const Bf16x8*>(src);
    else *dst = *src;
  }
}

__global__ void iota(int32_t* p, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    p[i] = static_cast<int32_t>(i);
}

constexpr int kChunk = 64;  // sorted entries per warp

// Pass 1: warp w sums the rows of sorted entries [w·kChunk, (w+1)·kChunk) run by run, for its
// 32·VEC columns (blockIdx.y). first[w] / last[w] receive the pieces of runs that cross into / out
// of the chunk; runs inside the chunk go straight to dwte.
template <int VEC>
__global__ void embed_backward_chunks(float* dwte, float* first, float* last, const bf16* dout,
                                      const int32_t* sorted_tok, const int32_t* sorted_pos, int64_t N, int d) {
  const int64_t w = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t i0 = w * kChunk, i1 = min(N, i0 + kChunk);
  if (i0 >= N) return;
  const int c = (blockIdx.y * 32 + lane) * VEC;
  const bool col_ok = c < d;
  float acc[VEC] = {};
  int32_t cur = sorted_tok[i0];
  int64_t start = i0;
  auto emit = [&](int64_t end) {  // the piece [start, end) of token cur
    const bool before = start == i0 && i0 > 0 && sorted_tok[i0 - 1] == cur;
    const bool after = end == i1 && i1 < N && sorted_tok[i1] == cur;
    float* dst = before ? first + w * d : after ? last + w * d : dwte + int64_t{cur} * d;
    if (col_ok) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) dst[c + k] = (before || after) ? acc[k] : dst[c + k] + acc[k];
    }
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = 0.0f;
  };
  for (int64_t j0 = i0; j0 < i1; j0 += 32) {
    const int cnt = static_cast<int>(i1 - j0 < 32 ? i1 - j0 : 32);
    const int32_t my_tok = lane < cnt ? sorted_tok[j0 + lane] : 0;
    const int32_t my_pos = lane < cnt ? sorted_pos[j0 + lane] : 0;
    for (int u0 = 0; u0 < cnt; u0 += 8) {
      // Issue up to 8 row loads before using any: a run's rows are independent.
      float f[8][VEC];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int pu = __shfl_sync(0xffffffffu, my_pos, (u0 + u) & 31);
#pragma unroll
        for (int k = 0; k < VEC; ++k) f[u][k] = 0.0f;
        if (u0 + u < cnt && col_ok) {
          const bf16* src = dout + int64_t{pu} * d + c;
          if constexpr (VEC == 8) load8(src, f[u]);
          else f[u][0] = __bfloat162float(*src);
        }
      }
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int32_t tu = __shfl_sync(0xffffffffu, my_tok, (u0 + u) & 31);
        if (u0 + u < cnt) {
          if (tu != cur) {
            emit(j0 + u0 + u);
            cur = tu;
            start = j0 + u0 + u;
          }
#pragma unroll
          for (int k = 0; k < VEC; ++k) acc[k] += f[u][k];
        }
      }
    }
  }
  emit(i1);
}

// Pass 2: the warp of the chunk where a boundary-crossing run starts adds that run's partials,
// chunk by chunk in order, into its dwte row.
template <int VEC>
__global__ void embed_backward_chains(float* dwte, const float* first, const float* last, const int32_t* sorted_tok,
                                      int64_t N, int d) {
  const int64_t w = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t i0 = w * kChunk, i1 = min(N, i0 + kChunk);
  if (i0 >= N || i1 >= N) return;
  const int32_t tok = sorted_tok[i1 - 1];
  if (sorted_tok[i1] != tok) return;                    // the last run ends inside this chunk
  if (i0 > 0 && sorted_tok[i0 - 1] == tok) return;      // it started in an earlier chunk
  const int c = (blockIdx.y * 32 + lane) * VEC;
  if (c >= d) return;
  float acc[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) acc[k] = last[w * d + c + k];
  for (int64_t v = w + 1;; ++v) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] += first[v * d + c + k];
    const int64_t e = min(N, (v + 1) * kChunk);
    if (e >= N || sorted_tok[e] != tok) break;
  }
  float* row = dwte + int64_t{tok} * d + c;
#pragma unroll
  for (int k = 0; k < VEC; ++k) row[k] += acc[k];
}

}  // namespace

void embedding_forward(bf16* out, const int32_t* tokens, const bf16* wte, int64_t N, int d, cudaStream_t s) {
  if (N == 0) return;
  if (d % 8 == 0 && aligned16(out) && aligned16(wte))
    embed_forward<8><<<grid_for(N * d / 8, 256), 256, 0, s>>>(out, tokens, wte, N, d);
  else
    embed_forward<1><<<grid_for(N * d, 256), 256, 0, s>>>(out, tokens, wte, N, d);
  MLKV_LAUNCH_CHECK();
}

void embedding_backward(float* dwte, const bf16* dout, const int32_t* tokens, int64_t N, int d, int64_t V,
                        Scratch& scratch, cudaStream_t s) {
  if (N == 0) return;
  if (N > INT32_MAX) throw Error("embedding_backward: more than 2^31 tokens in one call");
  int bits = 1;
  while (bits < 31 && (int64_t{1} << bits) < V) ++bits;  // sort only the bits a token id can have
  const int n = static_cast<int>(N);
  size_t cub_bytes = 0;
  MLKV_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, cub_bytes, tokens, static_cast<int32_t*>(nullptr),
                                                  static_cast<const int32_t*>(nullptr),
                                                  static_cast<int32_t*>(nullptr), n, 0, bits, s));
  const size_t ids = (sizeof(int32_t) * size_t(n) + 255) / 256 * 256;
  const int64_t chunks = ceil_div(N, kChunk);
  const size_t parts = (sizeof(float) * size_t(chunks) * d + 255) / 256 * 256;
  char* base = static_cast<char*>(scratch.get(3 * ids + 2 * parts + cub_bytes));
  auto* sorted_tok = reinterpret_cast<int32_t*>(base);
  auto* pos = reinterpret_cast<int32_t*>(base + ids);
  auto* sorted_pos = reinterpret_cast<int32_t*>(base + 2 * ids);
  auto* first = reinterpret_cast<float*>(base + 3 * ids);
  auto* last = reinterpret_cast<float*>(base + 3 * ids + parts);
  void* cub_tmp = base + 3 * ids + 2 * parts;
  iota<<<grid_for(N, 256), 256, 0, s>>>(pos, N);
  MLKV_LAUNCH_CHECK();
  MLKV_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(cub_tmp, cub_bytes, tokens, sorted_tok, pos, sorted_pos, n, 0, bits, s));
  const unsigned blocks = static_cast<unsigned>(ceil_div(chunks * 32, 256));
  const bool vec = d % 8 == 0 && aligned16(dout);
  const dim3 grid(blocks, static_cast<unsigned>(ceil_div(d, 32 * (vec ? 8 : 1))));
  if (vec) embed_backward_chunks<8><<<grid, 256, 0, s>>>(dwte, first, last, dout, sorted_tok, sorted_pos, N, d);
  else embed_backward_chunks<1><<<grid, 256, 0, s>>>(dwte, first, last, dout, sorted_tok, sorted_pos, N, d);
  MLKV_LAUNCH_CHECK();
  if (vec) embed_backward_chains<8><<<grid, 256, 0, s>>>(dwte, first, last, sorted_tok, N, d);
  else embed_backward_chains<1><<<grid, 256, 0, s>>>(dwte, first, last, sorted_tok, N, d);
  MLKV_LAUNCH_CHECK();
}

}  // namespace mlkv::cuda
