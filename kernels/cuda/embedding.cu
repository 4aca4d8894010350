// Token embedding (bf16 table, fp32 gradient):
//   forward:  out[N, d] = wte[tokens[n], :]
//   backward: dwte[V, d] += Σ_{n: tokens[n] = v} dout[n, :]   for every v, deterministically.
// The backward must not use float atomics (DESIGN §3b), and the host may not bucket tokens each
// step. So, on the device: a stable radix sort of (token, position) pairs (CUB) turns the batch
// into a token → positions CSR: equal tokens become contiguous runs, positions ascending within a
// run. One warp per run start then sums its run's dout rows in position order in fp32 and adds
// the sum to the token's row: each dwte row is written by exactly one warp, in a fixed order, so
// the result is bitwise reproducible. The sort touches only N keys (tens of thousands), far less
// than the N·d gradient the reduction reads.
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

// One warp per (sorted index, 256-column chunk); only warps at the start of a run of equal
// tokens work. Rows are fetched 8 at a time (positions read by the lanes, then broadcast), so a
// long run (a frequent token) keeps 8 independent loads in flight rather than one.
template <int VEC>
__global__ void embed_backward_runs(float* dwte, const bf16* dout, const int32_t* sorted_tok,
                                    const int32_t* sorted_pos, int64_t N, int d) {
  const int64_t i = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (i >= N) return;
  const int32_t tok = sorted_tok[i];
  if (i > 0 && sorted_tok[i - 1] == tok) return;
  const int c = (blockIdx.y * 32 + lane) * VEC;
  float acc[VEC] = {};
  for (int64_t j0 = i;; j0 += 32) {
    // Lane k looks at element j0 + k of the run; the run ends at the first lane that leaves it.
    const bool in_run = j0 + lane < N && sorted_tok[j0 + lane] == tok;
    const int32_t p = in_run ? sorted_pos[j0 + lane] : 0;
    const unsigned mask = __ballot_sync(0xffffffffu, in_run);
    const int count = mask == 0xffffffffu ? 32 : __ffs(~mask) - 1;
    for (int t0 = 0; t0 < count; t0 += 8) {
      float f[8][VEC];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int pu = __shfl_sync(0xffffffffu, p, t0 + u);
        if (t0 + u < count && c < d) {
          const bf16* src = dout + int64_t{pu} * d + c;
          if constexpr (VEC == 8) load8(src, f[u]);
          else f[u][0] = __bfloat162float(*src);
        } else {
#pragma unroll
          for (int k = 0; k < VEC; ++k) f[u][k] = 0.0f;
        }
      }
#pragma unroll
      for (int u = 0; u < 8; ++u)
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += f[u][k];
    }
    if (count < 32) break;
  }
  if (c < d) {
    float* row = dwte + int64_t{tok} * d + c;
#pragma unroll
    for (int k = 0; k < VEC; ++k) row[k] += acc[k];
  }
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
  char* base = static_cast<char*>(scratch.get(3 * ids + cub_bytes));
  auto* sorted_tok = reinterpret_cast<int32_t*>(base);
  auto* pos = reinterpret_cast<int32_t*>(base + ids);
  auto* sorted_pos = reinterpret_cast<int32_t*>(base + 2 * ids);
  void* cub_tmp = base + 3 * ids;
  iota<<<grid_for(N, 256), 256, 0, s>>>(pos, N);
  MLKV_LAUNCH_CHECK();
  MLKV_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(cub_tmp, cub_bytes, tokens, sorted_tok, pos, sorted_pos, n, 0, bits, s));
  const unsigned blocks = static_cast<unsigned>(ceil_div(N * 32, 256));
  if (d % 8 == 0 && aligned16(dout)) {
    const dim3 grid(blocks, static_cast<unsigned>(ceil_div(d, 32 * 8)));
    embed_backward_runs<8><<<grid, 256, 0, s>>>(dwte, dout, sorted_tok, sorted_pos, N, d);
  } else {
    const dim3 grid(blocks, static_cast<unsigned>(ceil_div(d, 32)));
    embed_backward_runs<1><<<grid, 256, 0, s>>>(dwte, dout, sorted_tok, sorted_pos, N, d);
  }
  MLKV_LAUNCH_CHECK();
}

}  // namespace mlkv::cuda
