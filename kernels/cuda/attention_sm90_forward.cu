// MLKV flash-attention forward on Hopper tensor cores (wgmma, sm_90a): out[B, T, H·hd] and
// lse[B, H, T] from q[B, H, T, hd], k/v[B, KVH, T, hd], causal, bf16 in, fp32 accumulate; the
// same contract as attention_fwd_kernel (attention_forward.cu), which remains the fallback.
//
// One block = NWG warpgroups, each owning 64 query rows of one (b, h). Per K/V tile of BC keys:
//   S (64 × BC)  = Q · Kᵀ   wgmma, Q and K from shared memory (K-major)
//   online softmax on S in registers (the per-warp layout is mma.m16n8k16's, as in the fallback),
//   P stored to shared memory as bf16
//   O (64 × hd) += P · V    wgmma, P (K-major) and V (MN-major) from shared memory
// K/V tiles stream through NS cp.async stages shared by the block's warpgroups. Within a
// warpgroup the softmax of tile j overlaps the P·V product of tile j-1 (see the loop).
//
// Also holds sm90_enabled(): the once-per-device check that the sm_90a code is present.
#include <cmath>
#include <mutex>
#include <vector>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_launch.cuh"
#include "kernels/cuda/attention_sm90.cuh"
#include "kernels/cuda/attention_sm90.h"

namespace mlkv::cuda {
namespace attn {
namespace {

template <int HD, int NWG, int BC, int NS>
struct Sm90FwdTile {
  static constexpr int kBr = 64 * NWG;
  static constexpr int kThreads = 128 * NWG;
  static constexpr size_t kSmem =  // Q, NS stages of K and V, 2 buffers of P
      (size_t(kBr + 2 * NS * BC) * HD + size_t(2) * kBr * BC) * sizeof(bf16);
  static_assert(NS >= 4, "tile j-3's stage is the one refilled in iteration j");
  static_assert(kSmem <= 227 * 1024, "shared memory per block");
};

template <int HD, int NWG, int BC, int NS>
__global__ void __launch_bounds__(NWG * 128, 1)
    attention_fwd_sm90_kernel(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ q,
                              const bf16* __restrict__ k, const bf16* __restrict__ v, int T, int H, int group,
                              float scale_log2) {
#ifdef MLKV_SM90A
  using Tile = Sm90FwdTile<HD, NWG, BC, NS>;
  constexpr int kBr = Tile::kBr, kNT = Tile::kThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);  // [kBr × HD] core-matrix layout
  bf16* sK = sQ + kBr * HD;                      // [NS][BC × HD]
  bf16* sV = sK + NS * BC * HD;                  // [NS][BC × HD]
  bf16* sP = sV + NS * BC * HD;                  // [2][kBr × BC]: P of tiles j (even/odd)

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, wq = warp & 3;  // warpgroup, warp within it
  const int qt = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  const int KVH = H / group, g = h / group;
  const int q0 = qt * kBr;
  const bf16* qp = q + (int64_t(b) * H + h) * T * HD;
  const bf16* kp = k + (int64_t(b) * KVH + g) * T * HD;
  const bf16* vp = v + (int64_t(b) * KVH + g) * T * HD;
  const int kv_end = min(q0 + kBr, T);
  const int n_tiles = (kv_end + BC - 1) / BC;

  // Pipeline, per warpgroup, iteration j:
  //   wait for P_{j-2}·V_{j-2};  O *= alpha_{j-1};  issue S_j = Q·K_jᵀ, then O += P_{j-1}·V_{j-1};
  //   wait for S_j only;  softmax of S_j → P_j (into P buffer j % 2), alpha_j
  // so the softmax runs while the tensor cores do P_{j-1}·V_{j-1}, and no wait follows it in
  // the iteration (ptxas moves waits up past independent arithmetic, which would undo that).
  // Tile t (K and V) lives in stage t % NS. At the top of iteration j every warpgroup is past
  // the wait for P_{j-3}·V_{j-3} (made in iteration j-1), so after the barrier tile j-3's stage
  // takes tile j+NS-3. The same barrier (after each thread's proxy fence) publishes P_{j-1} to
  // the tensor cores. No wgmma sits under a branch (ptxas would serialise them), so warpgroups
  // whose rows all lie above a tile still run it, fully masked.
  const TileLoader<BC, HD, kNT> kv_loader(tid);
  auto load_kv = [&](int t) {
    kv_loader.load(sK + (t % NS) * BC * HD, kp, HD, t * BC, T, tid);
    kv_loader.load(sV + (t % NS) * BC * HD, vp, HD, t * BC, T, tid);
  };
  {
    const TileLoader<kBr, HD, kNT> q_loader(tid);
    q_loader.load(sQ, qp, HD, q0, T, tid);
  }
  load_kv(0);
  cp_async_commit();
#pragma unroll
  for (int t = 1; t <= NS - 4; ++t) {  // one group per tile, empty past the end
    if (t < n_tiles) load_kv(t);
    cp_async_commit();
  }

  const int wg_row0 = q0 + wg * 64;     // first query row of this warpgroup
  const int wrow0 = wg_row0 + wq * 16;  // ... of this warp
  const int r0 = wrow0 + (lane >> 2);   // this thread's rows r0, r0 + 8
  float o[HD / 2];
#pragma unroll
  for (int i = 0; i < HD / 2; ++i) o[i] = 0.f;
  float s[BC / 2];
#pragma unroll
  for (int i = 0; i < BC / 2; ++i) s[i] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float alpha[2] = {0.f, 0.f};  // rescale factor that goes with the newest P

  auto top = [&](int j) {  // tile j resident, P_{j-1} published; refill tile j-3's stage
    cp_async_wait<NS - 4>();
    fence_proxy_async();
    __syncthreads();
    if (j + NS - 3 < n_tiles) load_kv(j + NS - 3);
    cp_async_commit();
  };
  // O *= alpha; then S_j = Q·K_jᵀ and O += P_{j-1}·V_{j-1}, as two commit groups.
  auto rescale_issue = [&](int j, bool with_s, bool with_pv) {
    if (with_pv) scale_rows<HD>(o, alpha);
    fence_regs(s);
    fence_regs(o);
    wgmma_fence();
    if (with_s) {
      const bf16* cK = sK + (j % NS) * BC * HD;
#pragma unroll
      for (int ks = 0; ks < HD / 16; ++ks)
        WgmmaSS<BC>::run(s, desc_kmajor<HD>(sQ, wg * 64, ks), desc_kmajor<HD>(cK, 0, ks), ks > 0);
      wgmma_commit();
    }
    if (with_pv) {
      const bf16* cP = sP + ((j - 1) & 1) * kBr * BC;
      const bf16* cV = sV + ((j - 1) % NS) * BC * HD;
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk)
        WgmmaSS<HD, 1>::run(o, desc_kmajor<BC>(cP, wg * 64, kk), desc_mnmajor<HD>(cV, kk), 1);
      wgmma_commit();
    }
    fence_regs(s);
    fence_regs(o);
  };
  // Online softmax of S_j (attention_sm90.cuh), P_j to its shared-memory buffer.
  auto softmax = [&](int j) {
    online_softmax_tile<BC>(s, m, l, alpha, j * BC, wrow0, r0, T, scale_log2, lane);
    store_acc_cm<BC>(sP + (j & 1) * kBr * BC, wg * 64 + wq * 16, s, lane);
  };

  top(0);
  rescale_issue(0, true, false);
  wgmma_wait<0>();
  fence_regs(s);
  softmax(0);
  for (int j = 1; j < n_tiles; ++j) {
    top(j);
    wgmma_wait<0>();  // P_{j-2}·V_{j-2} done: O and P buffer j % 2 are free
    fence_regs(o);
    rescale_issue(j, true, true);
    wgmma_wait<1>();  // S_j done; P_{j-1}·V_{j-1} may still run
    fence_regs(s);
    softmax(j);
  }
  wgmma_wait<0>();
  fence_regs(o);
  fence_proxy_async();  // publish the last P
  __syncthreads();
  rescale_issue(n_tiles, false, true);
  wgmma_wait<0>();
  fence_regs(o);

  // Epilogue: normalise, stage this warp's rows in its own part of sQ (core-matrix layout), then
  // write 16-byte chunks to out[b, t, h·hd + d].
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  const float inv0 = 1.f / l[0], inv1 = 1.f / l[1];
  bf16* sO = sQ + wg * 64 * HD;  // this warpgroup's 64 rows; only it read them
  const int lr = wq * 16 + (lane >> 2);
#pragma unroll
  for (int dt = 0; dt < HD / 8; ++dt) {
    const int col = dt * 8 + (lane & 3) * 2;
    *reinterpret_cast<uint32_t*>(sO + cm_offset<HD>(lr, col)) = pack_bf16(o[4 * dt] * inv0, o[4 * dt + 1] * inv0);
    *reinterpret_cast<uint32_t*>(sO + cm_offset<HD>(lr + 8, col)) =
        pack_bf16(o[4 * dt + 2] * inv1, o[4 * dt + 3] * inv1);
  }
  __syncwarp();
  constexpr int kChunks = HD / 8;
  for (int c = lane; c < 16 * kChunks; c += 32) {
    const int r8 = c & 7, rest = c >> 3;
    const int ch = rest % kChunks, rr = wq * 16 + (rest / kChunks) * 8 + r8;
    const int t = wg_row0 + rr;
    if (t < T)
      *reinterpret_cast<uint4*>(out + (int64_t(b) * T + t) * H * HD + h * HD + ch * 8) =
          *reinterpret_cast<const uint4*>(sO + cm_offset<HD>(rr, ch * 8));
  }
  if ((lane & 3) == 0) {
    float* lp = lse + (int64_t(b) * H + h) * T;
    if (r0 < T) lp[r0] = (m[0] + log2f(l[0])) * kLn2;
    if (r0 + 8 < T) lp[r0 + 8] = (m[1] + log2f(l[1])) * kLn2;
  }
#endif
}

template <int HD, int NWG, int BC, int NS>
void launch_fwd_sm90(void* out, float* lse, const void* q, const void* k, const void* v, int B, int T, int H,
                     int KVH, cudaStream_t stream) {
  using Tile = Sm90FwdTile<HD, NWG, BC, NS>;
  auto kernel = attention_fwd_sm90_kernel<HD, NWG, BC, NS>;
  allow_smem(kernel, Tile::kSmem);
  const dim3 grid((T + Tile::kBr - 1) / Tile::kBr, H, B);
  kernel<<<grid, Tile::kThreads, Tile::kSmem, stream>>>(
      static_cast<bf16*>(out), lse, static_cast<const bf16*>(q), static_cast<const bf16*>(k),
      static_cast<const bf16*>(v), T, H, H / KVH, kLog2e / std::sqrt(float(HD)));
  check_launch("attention_fwd_sm90_kernel");
}

__global__ void sm90a_probe_kernel(int* flag) {
#ifdef MLKV_SM90A
  *flag = 1;
#else
  *flag = 0;
#endif
}

std::mutex g_probe_mutex;
std::vector<int> g_probe;  // per device: -1 unknown, 0 no, 1 yes
bool g_sm90_allowed = true;
bool g_ws_forward = true;
bool g_ws_backward = true;

}  // namespace

bool sm90_enabled() {
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  std::lock_guard<std::mutex> lock(g_probe_mutex);
  if (!g_sm90_allowed) return false;
  if (g_probe.size() <= size_t(dev)) g_probe.resize(dev + 1, -1);
  if (g_probe[dev] < 0) {
    int major = 0, minor = 0;
    check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
    check_cuda(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "cudaDeviceGetAttribute");
    int found = 0;
    if (major == 9 && minor == 0) {
      int* flag = nullptr;
      check_cuda(cudaMalloc(&flag, sizeof(int)), "cudaMalloc(probe)");
      sm90a_probe_kernel<<<1, 1>>>(flag);
      const cudaError_t e = cudaMemcpy(&found, flag, sizeof(int), cudaMemcpyDeviceToHost);
      cudaFree(flag);
      // No kernel image for this device means the binary has no sm_90-family code at all.
      if (e != cudaSuccess) found = 0;
      cudaGetLastError();
    }
    g_probe[dev] = found;
  }
  return g_probe[dev] == 1;
}

void forward_sm90(void* out, float* lse, const void* q, const void* k, const void* v, int B, int T, int H, int KVH,
                  int hd, cudaStream_t stream) {
  // The warp-specialised forward has a kernel for every head dim (hd 80 on the hd-128 one,
  // columns 80-127 zero-filled), MHA included since K and V have barriers of their own: H100,
  // 2026-12-07, 4,32,32,2048,80 forward 0.344 / 0.345 ms here, 0.251 there (ATTENTION_NOTES log
  // 21). This lockstep kernel runs after attention_use_ws_forward(false).
  bool ws = false;
  {
    std::lock_guard<std::mutex> lock(g_probe_mutex);
    ws = g_ws_forward;
  }
  if (ws) return forward_sm90_ws(out, lse, q, k, v, B, T, H, KVH, hd, stream);
  switch (hd) {
    // Shared memory: Q + NS stages of K, V + 2 P buffers = 160, 184, 160, 208 KB. Four warpgroups
    // (256 query rows) a block where they fit: 21-24 % faster than two at hd 64/80/128 (log 9).
    case 64: launch_fwd_sm90<64, 4, 64, 4>(out, lse, q, k, v, B, T, H, KVH, stream); break;
    case 80: launch_fwd_sm90<80, 4, 64, 4>(out, lse, q, k, v, B, T, H, KVH, stream); break;
    case 128: launch_fwd_sm90<128, 4, 32, 4>(out, lse, q, k, v, B, T, H, KVH, stream); break;
    case 256: launch_fwd_sm90<256, 2, 32, 4>(out, lse, q, k, v, B, T, H, KVH, stream); break;
  }
}

bool ws_backward_enabled(int hd, int group) {
  if (!sm90_enabled() || !ws_backward_takes(hd, group)) return false;
  std::lock_guard<std::mutex> lock(g_probe_mutex);
  return g_ws_backward;
}

}  // namespace attn

void attention_use_sm90(bool enable) {
  std::lock_guard<std::mutex> lock(attn::g_probe_mutex);
  attn::g_sm90_allowed = enable;
}

bool attention_sm90_active() { return attn::sm90_enabled(); }

void attention_use_ws_forward(bool enable) {
  std::lock_guard<std::mutex> lock(attn::g_probe_mutex);
  attn::g_ws_forward = enable;
}

bool attention_ws_forward_active(int hd) {
  if (!attn::sm90_enabled() || !attention_supports_head_dim(hd)) return false;
  std::lock_guard<std::mutex> lock(attn::g_probe_mutex);
  return attn::g_ws_forward;
}

void attention_use_ws_backward(bool enable) {
  std::lock_guard<std::mutex> lock(attn::g_probe_mutex);
  attn::g_ws_backward = enable;
}

bool attention_ws_backward_active(int hd, int group) { return attn::ws_backward_enabled(hd, group); }

const char* attention_backward_kernel(int hd, int group) {
  if (!attn::sm90_enabled()) return "mma.sync";
  if (attn::ws_backward_enabled(hd, group)) return "warp-specialised";
  return attn::backward_dkdv_sm90_supports(hd) ? "two-kernel wgmma" : "two-kernel wgmma (mma.sync dK/dV)";
}

const char* attention_forward_kernel(int hd) {
  if (!attn::sm90_enabled()) return "mma.sync";
  if (!attention_ws_forward_active(hd)) return "lockstep wgmma";
  const bool kv_apart = attn::ws_forward_split_kv(hd);
  if (attn::ws_pingpong())
    return kv_apart ? "warp-specialised, ping-pong, K/V barriers apart" : "warp-specialised, ping-pong";
  return kv_apart ? "warp-specialised, no ping-pong, K/V barriers apart" : "warp-specialised, no ping-pong";
}

}  // namespace mlkv::cuda
