// MLKV flash-attention forward, warp-specialised (FlashAttention-3's Hopper structure, sm_90a):
// out[B, T, H·hd] and lse[B, H, T] from q[B, H, T, hd], k/v[B, KVH, T, hd], causal; the same
// contract as attention_fwd_sm90_kernel (attention_sm90_forward.cu). hd 80 runs on the hd-128
// kernel: the TMA loads zero-fill columns 80-127, S skips their k-steps, P·V and O are 80 wide.
//
// One block = one producer warpgroup + two consumer warpgroups; a work tile is 128 query rows of
// one (b, h), heaviest first; a block takes one work tile, or (PERSISTENT) one block per SM walks
// the work tiles with its K/V ring running on from one to the next.
//   producer (one thread): TMA loads of the Q tile, then of each K/V tile into an NS-stage
//     shared-memory ring; stage s is refilled once both consumers have released it (mbarriers:
//     full[s] counts the TMA bytes, empty[s] the consumer warps' arrivals). Above hd 64 K and V
//     have barriers of their own (SPLIT_KV): K_j is released once S_j has retired and K_{j+1}
//     is loaded before V_j, so the K loads run a tile further ahead of the products.
//   consumers (64 query rows each), per K/V tile j:
//     S_j = Q·K_jᵀ            wgmma, Q and K from shared memory (K-major, 128-byte swizzle)
//     O  += P_{j-1}·V_{j-1}   wgmma, P from registers (bf16), V from shared memory (MN-major)
//     softmax of S_j in registers while P_{j-1}·V_{j-1} runs (intra-warpgroup overlap); then
//     O *= alpha_j and P_j is packed to bf16 in place of P_{j-1}, whose product has retired.
//   Ping-pong (PINGPONG): the consumers issue their products in turn, handing the turn over
//     with named barriers, so one warpgroup's softmax runs while the other's products use the
//     tensor cores, instead of both softmaxes falling in the same window.
//   Epilogue: O normalised into shared memory and written by a TMA store, so the consumer
//     starts the next work tile while it drains (hd 256, short of room, stages it in its Q rows).
// The producer gives registers to the consumers (setmaxnreg): it needs few.
#include <algorithm>
#include <climits>
#include <cmath>

#include "core/env.h"
#include "kernels/cuda/attention_sm90.cuh"
#include "kernels/cuda/attention_sm90.h"
#include "kernels/cuda/attention_tma.cuh"

namespace mlkv::cuda::attn {
namespace {

template <int HD, int BC, int NS>
struct WsFwdTile {
  static constexpr int kConsumers = 2;
  static constexpr int kBr = 64 * kConsumers;
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kChunks = HD / 64;  // 64-column TMA boxes per row
  static constexpr uint32_t kQBytes = kBr * HD * 2;
  static constexpr uint32_t kKVBytes = BC * HD * 2;         // K or V, one stage
  static constexpr size_t kRingSmem = 1024 + kQBytes + size_t(2) * NS * kKVBytes;  // + 1024-byte alignment slack
  // O leaves through shared memory and a TMA store (the consumer goes on while it is written):
  // through a buffer of its own where the kBr × HD tile fits beside the ring, else (hd 256)
  // through each consumer's own Q rows, which only its S products read.
  static constexpr bool kOwnOutBuf = kRingSmem + kQBytes <= 227 * 1024;
  static constexpr size_t kSmem = kRingSmem + (kOwnOutBuf ? kQBytes : 0);
  static_assert(HD % 64 == 0, "TMA boxes are 64 columns (128 bytes) wide");
  static_assert(kSmem <= 227 * 1024, "shared memory per block");
  static_assert(NS >= 2, "a consumer waits for tile j before it releases tile j-1");
};

// Registers per thread after the hand-over: (40 + 2·232)·128 = 64,512 of the SM's 65,536.
constexpr int kProducerRegs = 40;
constexpr int kConsumerRegs = 232;

// Work tile w (kBr query rows of one (b, h)). Numbered by L2 section (`sec`, of KV heads, whose
// K/V the section's tiles re-read; l2_sections), then with the query tile slowest and from the
// last (the most causal K/V tiles) down, so the heaviest tiles start first everywhere.
struct WorkTile {
  int q0, h, b;
};
__device__ __forceinline__ WorkTile work_tile(int w, int n_qt, int H, int group, int br, const L2Sections& sec) {
  const SectionPos at = section_pos(w, sec, group * n_qt);
  const int heads = at.size * group;  // query heads in this section
  const int bh = at.first * group + at.rest % heads;
  return {(n_qt - 1 - at.rest / heads) * br, bh % H, bh / H};
}

// HDR: the tensors' head dim (≤ HD; the columns past it are zero in shared memory); O's
// accumulator and P·V are acc_cols(HDR) wide.
// SPLIT_KV: K and V stages have barriers of their own: K_j's stage is released once S_j has
// retired, half a tile before P_j·V_j does, and the producer issues K_{j+1} before V_j (the
// order the consumers use them in), so K runs further ahead of the products.
template <int HD, int BC, int NS, bool PINGPONG, int HDR, bool SPLIT_KV>
__global__ void __launch_bounds__(384, 1)
    attention_fwd_ws_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                            const __grid_constant__ CUtensorMap tm_v, const __grid_constant__ CUtensorMap tm_o,
                            bf16* __restrict__ out,
                            float* __restrict__ lse, int B, int T, int H, int group, L2Sections section,
                            float scale_log2, bool tma_out) {
#ifdef MLKV_SM90A
  using Tile = WsFwdTile<HD, BC, NS>;
  constexpr int kBr = Tile::kBr, kChunks = Tile::kChunks, kNC = Tile::kConsumers;
  extern __shared__ unsigned char smem_raw[];
  // bar_full/bar_empty: stage s's K and V together, or (SPLIT_KV) its K; bar_*_v: its V (SPLIT_KV).
  __shared__ __align__(8) uint64_t bar_q_full, bar_q_empty, bar_full[NS], bar_empty[NS], bar_full_v[NS],
      bar_empty_v[NS];
  // 128-byte-swizzled regions must start on 1024 bytes.
  bf16* sQ = reinterpret_cast<bf16*>(smem_align1024(smem_raw));
  bf16* sK = sQ + kBr * HD;      // [NS][kChunks][BC × 64]
  bf16* sV = sK + NS * BC * HD;  // [NS][kChunks][BC × 64]
  bf16* sO = sV + NS * BC * HD;  // [kConsumers][kChunks][64 × 64] where Tile::kOwnOutBuf
  // O in Q's rows: the next work tile's Q may load only once the store has read them.
  const bool out_in_q = tma_out && !Tile::kOwnOutBuf;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
  const int KVH = H / group;
  const int n_qt = (T + kBr - 1) / kBr, n_work = n_qt * H * B;
  auto tiles_of = [&](int q0) { return (min(q0 + kBr, T) + BC - 1) / BC; };

  if (tid == 0) {
    mbar_init(&bar_q_full, 1);
    mbar_init(&bar_q_empty, kNC * 4);  // one arrival per consumer warp
#pragma unroll
    for (int s = 0; s < NS; ++s) {
      mbar_init(&bar_full[s], 1);
      mbar_init(&bar_empty[s], kNC * 4);
      mbar_init(&bar_full_v[s], 1);
      mbar_init(&bar_empty_v[s], kNC * 4);
    }
    mbar_init_fence();
  }
  __syncthreads();  // the last block-wide barrier: the producer leaves early

  // Persistent: each block takes work tiles blockIdx.x, + gridDim.x, ... The K/V ring runs on
  // across work tiles (`it` counts the K/V tiles so far: stage it % NS, phase it / NS), so the
  // producer loads the next work tile's Q and K/V while the consumers finish the current one.
  if (wg == 0) {
    regs_dealloc<kProducerRegs>();
    if (tid == 0) {
      tma_prefetch_map(&tm_q);
      tma_prefetch_map(&tm_k);
      tma_prefetch_map(&tm_v);
      int it = 0, wi = 0;
      for (int w = blockIdx.x; w < n_work; w += gridDim.x, ++wi) {
        const WorkTile wt = work_tile(w, n_qt, H, group, kBr, section);
        const int kv_row = wt.b * KVH + wt.h / group;
        if (wi > 0) mbar_wait(&bar_q_empty, (wi - 1) & 1);  // the previous Q is no longer read
        mbar_arrive_expect_tx(&bar_q_full, Tile::kQBytes);
#pragma unroll
        for (int c = 0; c < kChunks; ++c)
          tma_load_3d(sQ + c * kBr * 64, &tm_q, c * 64, wt.q0, wt.b * H + wt.h, &bar_q_full);
        const int n_tiles = tiles_of(wt.q0);
        // K (or K and V) of tile t into stage (it + t) % NS once its previous use is released.
        const auto load_k = [&](int t) {
          const int g = it + t, st = g % NS;
          if (g >= NS) mbar_wait(&bar_empty[st], (g / NS - 1) & 1);
          mbar_arrive_expect_tx(&bar_full[st], (SPLIT_KV ? 1 : 2) * Tile::kKVBytes);
#pragma unroll
          for (int c = 0; c < kChunks; ++c) {
            tma_load_3d(sK + (st * kChunks + c) * BC * 64, &tm_k, c * 64, t * BC, kv_row, &bar_full[st]);
            if (!SPLIT_KV)
              tma_load_3d(sV + (st * kChunks + c) * BC * 64, &tm_v, c * 64, t * BC, kv_row, &bar_full[st]);
          }
        };
        const auto load_v = [&](int t) {
          const int g = it + t, st = g % NS;
          if (g >= NS) mbar_wait(&bar_empty_v[st], (g / NS - 1) & 1);
          mbar_arrive_expect_tx(&bar_full_v[st], Tile::kKVBytes);
#pragma unroll
          for (int c = 0; c < kChunks; ++c)
            tma_load_3d(sV + (st * kChunks + c) * BC * 64, &tm_v, c * 64, t * BC, kv_row, &bar_full_v[st]);
        };
        if (SPLIT_KV) {
          load_k(0);
          for (int t = 0; t < n_tiles; ++t) {
            if (t + 1 < n_tiles) load_k(t + 1);
            load_v(t);
          }
        } else {
          for (int t = 0; t < n_tiles; ++t) load_k(t);
        }
        it += n_tiles;
      }
    }
    return;
  }

  regs_alloc<kConsumerRegs>();
  const int cw = wg - 1, wq = warp & 3;  // consumer warpgroup, warp within it
  constexpr int NACC = acc_cols(HDR);
  static_assert(NACC <= HD, "O's columns within the kernel's");
  float o[NACC / 2];
  float s[BC / 2];
#pragma unroll
  for (int i = 0; i < BC / 2; ++i) s[i] = 0.f;
  uint32_t p[BC / 16][4];  // P of the newest tile, the A operand of P·V
  float m[2], l[2], alpha[2];
  int it = 0, wi = 0, n_tiles = 0, wrow0 = 0, r0 = 0;
  // Ping-pong turns: consumer cw waits on barrier 1 + cw and hands the turn to the other on
  // 2 - cw; per work tile, consumer 1 hands consumer 0 the first turn and skips its own last
  // hand-over, so every barrier sees as many arrivals as waits.
  auto take_turn = [&] {
    if (PINGPONG) named_sync(1 + cw, 256);
  };
  auto pass_turn = [&](int j) {
    if (PINGPONG && !(cw == 1 && j == n_tiles - 1)) named_arrive(2 - cw, 256);
  };

  const uint32_t q_addr = smem_addr(sQ) + cw * 64 * 128;
  auto issue_s = [&](int j) {
    const uint32_t k_addr = smem_addr(sK + ((it + j) % NS) * kChunks * BC * 64);
#pragma unroll
    for (int ks = 0; ks < NACC / 16; ++ks) {  // k-steps over zero columns skipped
      const uint32_t in = (ks % 4) * 32;  // k-step within its 64-column region
      WgmmaSS<BC>::run(s, desc_sw128(q_addr + (ks / 4) * kBr * 128 + in, 16, 1024),
                       desc_sw128(k_addr + (ks / 4) * BC * 128 + in, 16, 1024), ks > 0);
    }
  };
  auto issue_pv = [&](int j) {
    const uint32_t v_addr = smem_addr(sV + ((it + j) % NS) * kChunks * BC * 64);
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk)
      WgmmaRS<NACC>::run(o, p[kk], desc_sw128(v_addr + kk * 2048, BC * 128, 1024), 1);
  };
  // This warp is done reading tile j's K (release_k) or V (release_v); without SPLIT_KV, K and V
  // share one barrier and are released together by release_v.
  auto release_k = [&](int j) {
    if (!SPLIT_KV) return;
    __syncwarp();
    if (lane == 0) mbar_arrive(&bar_empty[(it + j) % NS]);
  };
  auto release_v = [&](int j) {
    __syncwarp();
    if (lane == 0) mbar_arrive(SPLIT_KV ? &bar_empty_v[(it + j) % NS] : &bar_empty[(it + j) % NS]);
  };
  auto wait_k = [&](int j) { mbar_wait(&bar_full[(it + j) % NS], ((it + j) / NS) & 1); };
  auto wait_v = [&](int j) {
    if (SPLIT_KV) mbar_wait(&bar_full_v[(it + j) % NS], ((it + j) / NS) & 1);
  };
  auto softmax = [&](int j) { online_softmax_tile<BC>(s, m, l, alpha, j * BC, wrow0, r0, T, scale_log2, lane); };
  // O *= alpha (before the newest P's product is added), then P packed as 16-key A fragments
  // (two n8 accumulator tiles each).
  auto rescale_pack = [&] {
    scale_rows<NACC>(o, alpha);
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      p[kk][0] = pack_bf16(s[8 * kk], s[8 * kk + 1]);
      p[kk][1] = pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
      p[kk][2] = pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
      p[kk][3] = pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
    }
  };

  for (int w = blockIdx.x; w < n_work; w += gridDim.x, ++wi) {
    const WorkTile wt = work_tile(w, n_qt, H, group, kBr, section);
    n_tiles = tiles_of(wt.q0);
    wrow0 = wt.q0 + cw * 64 + wq * 16;
    r0 = wrow0 + (lane >> 2);  // this thread's rows r0, r0 + 8
#pragma unroll
    for (int i = 0; i < NACC / 2; ++i) o[i] = 0.f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.f;
    if (PINGPONG && cw == 1) named_arrive(1, 256);

    mbar_wait(&bar_q_full, wi & 1);
    wait_k(0);
    take_turn();
    fence_regs(s);
    wgmma_fence();
    issue_s(0);
    wgmma_commit();
    pass_turn(0);
    wgmma_wait<0>();
    fence_regs(s);
    release_k(0);
    softmax(0);
    rescale_pack();
    for (int j = 1; j < n_tiles; ++j) {
      wait_k(j);
      wait_v(j - 1);
      take_turn();
      fence_regs(s);
      fence_regs(o);
      wgmma_fence();
      issue_s(j);
      wgmma_commit();
      issue_pv(j - 1);
      wgmma_commit();
      pass_turn(j);
      wgmma_wait<1>();  // S_j done; P_{j-1}·V_{j-1} may still run
      fence_regs(s);
      release_k(j);
      softmax(j);
      wgmma_wait<0>();  // P_{j-1}·V_{j-1} done: O and the P registers are free
      fence_regs(o);
      fence_regs_u32(p);
      release_v(j - 1);
      rescale_pack();
    }
    wait_v(n_tiles - 1);
    fence_regs(o);
    wgmma_fence();
    issue_pv(n_tiles - 1);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(o);
    fence_regs_u32(p);
    release_v(n_tiles - 1);
    __syncwarp();
    if (lane == 0 && !out_in_q) mbar_arrive(&bar_q_empty);  // every S of this work tile is done
    it += n_tiles;

    // Epilogue: normalise this thread's two rows; O through shared memory and a TMA store, or
    // (MLKV_ATTN_FWD_TMA_OUT=0) straight from registers in 4-byte pieces.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    const float inv0 = 1.f / l[0], inv1 = 1.f / l[1];
    if (tma_out) {
      // Into this consumer's 64 rows of sO in the TMA box layout (64-column boxes, 128-byte
      // swizzle: 16-byte chunk j of row r at j ^ (r & 7), so a warp's 8 rows × 16 bytes hit
      // distinct banks), then one thread stores the boxes; rows past T are clipped by the TMA.
      // Its previous store must have read sO first. Direct 4-byte stores measured ~9 % of the
      // hd-64 kernel's stall samples, queued behind one another (ATTENTION_NOTES log 16).
      // Box c of this consumer: in sO [consumer][box], or in sQ [box][kBr rows] at its rows.
      const bool leader = (tid & 127) == 0;
      if (leader && !out_in_q) bulk_wait_read<0>();
      if (!out_in_q) named_sync(3 + cw, 128);
      bf16* so = out_in_q ? sQ + cw * 64 * 64 : sO + cw * 64 * HD;
      const int box_stride = out_in_q ? kBr * 64 : 64 * 64;
      const int rr = wq * 16 + (lane >> 2);  // rows rr, rr + 8 of the consumer's 64; same swizzle
#pragma unroll
      for (int dt = 0; dt < NACC / 8; ++dt) {
        const int off = (dt / 8) * box_stride + rr * 64 + ((dt % 8) ^ (rr & 7)) * 8 + (lane & 3) * 2;
        *reinterpret_cast<uint32_t*>(so + off) = pack_bf16(o[4 * dt] * inv0, o[4 * dt + 1] * inv0);
        *reinterpret_cast<uint32_t*>(so + off + 8 * 64) = pack_bf16(o[4 * dt + 2] * inv1, o[4 * dt + 3] * inv1);
      }
      fence_proxy_async();
      named_sync(3 + cw, 128);
      if (leader) {
#pragma unroll
        for (int c = 0; c < kChunks; ++c)
          tma_store_4d(&tm_o, c * 64, wt.h, wt.q0 + cw * 64, wt.b, so + c * box_stride);
        bulk_commit();
      }
      if (out_in_q) {  // Q's rows are free for the next work tile once the store has read them
        if (leader) bulk_wait_read<0>();
        named_sync(3 + cw, 128);
        if (lane == 0) mbar_arrive(&bar_q_empty);
      }
    } else {
      bf16* row0 = out + (int64_t(wt.b) * T + r0) * H * HDR + wt.h * HDR;
      bf16* row1 = row0 + int64_t(8) * H * HDR;
#pragma unroll
      for (int dt = 0; dt < NACC / 8; ++dt) {
        const int col = dt * 8 + (lane & 3) * 2;
        if (r0 < T) *reinterpret_cast<uint32_t*>(row0 + col) = pack_bf16(o[4 * dt] * inv0, o[4 * dt + 1] * inv0);
        if (r0 + 8 < T)
          *reinterpret_cast<uint32_t*>(row1 + col) = pack_bf16(o[4 * dt + 2] * inv1, o[4 * dt + 3] * inv1);
      }
    }
    if ((lane & 3) == 0) {
      float* lp = lse + (int64_t(wt.b) * H + wt.h) * T;
      if (r0 < T) lp[r0] = (m[0] + log2f(l[0])) * kLn2;
      if (r0 + 8 < T) lp[r0 + 8] = (m[1] + log2f(l[1])) * kLn2;
    }
  }
  if (tma_out) {
    if ((tid & 127) == 0) bulk_wait<0>();  // the staging rows stay in use until the last store is done
  }
#endif
}

// PERSISTENT: one block per SM walking the work tiles (the next tile's loads overlap the current
// one's epilogue) rather than one block per work tile (the hardware balances the causal tail).
template <int HD, int BC, int NS, bool PERSISTENT, int HDR = HD>
void launch_fwd_ws(void* out, float* lse, const void* q, const void* k, const void* v, int B, int T, int H, int KVH,
                   cudaStream_t stream) {
  using Tile = WsFwdTile<HD, BC, NS>;
  const bool pingpong = ws_pingpong();
  // Measurement switch (core/env.h): MLKV_ATTN_PERSISTENT=0 or =1 forces one block per work
  // tile or one per SM over the per-head-dim default; read per call, as the tests flip it.
  const int forced = env_switch("MLKV_ATTN_PERSISTENT");
  const bool persistent = forced < 0 ? PERSISTENT : forced == 1;
  static_assert(HDR <= HD && HD - HDR < 64, "padding within the last 64-column region");
  const CUtensorMap tm_q = make_tmap_bf16_3d(q, HDR, T, uint64_t(B) * H, Tile::kBr);
  const CUtensorMap tm_k = make_tmap_bf16_3d(k, HDR, T, uint64_t(B) * KVH, BC);
  const CUtensorMap tm_v = make_tmap_bf16_3d(v, HDR, T, uint64_t(B) * KVH, BC);
  const CUtensorMap tm_o = make_tmap_bf16_heads(out, HDR, H, T, B, 64);  // 64-row boxes, clipped at column HDR
  // Measurement switch: MLKV_ATTN_FWD_TMA_OUT=0 writes O from registers at every head dim.
  const bool tma_out = env_switch("MLKV_ATTN_FWD_TMA_OUT") != 0;
  const bool split_kv = ws_forward_split_kv(HD);
  auto kernel = pingpong ? (split_kv ? attention_fwd_ws_kernel<HD, BC, NS, true, HDR, true>
                                     : attention_fwd_ws_kernel<HD, BC, NS, true, HDR, false>)
                         : (split_kv ? attention_fwd_ws_kernel<HD, BC, NS, false, HDR, true>
                                     : attention_fwd_ws_kernel<HD, BC, NS, false, HDR, false>);
  allow_smem(kernel, Tile::kSmem);
  const int64_t n_work = int64_t((T + Tile::kBr - 1) / Tile::kBr) * H * B;
  if (n_work > INT32_MAX) throw Error("attention_forward: too many query tiles for one launch");
  const int grid = persistent ? int(std::min<int64_t>(n_work, sm_count())) : int(n_work);
  const L2Sections section = l2_sections(int64_t(4) * T * HDR, int64_t(B) * KVH, 0.5);  // K and V, bf16
  kernel<<<grid, Tile::kThreads, Tile::kSmem, stream>>>(tm_q, tm_k, tm_v, tm_o, static_cast<bf16*>(out), lse, B, T, H,
                                                        H / KVH, section, kLog2e / std::sqrt(float(HDR)), tma_out);
  check_launch("attention_fwd_ws_kernel");
}

}  // namespace

// K and V on barriers of their own except at hd 64 (H100, same call: 8,8,8,2048,256 0.374 →
// 0.287 ms, 2,16,16,8192,128 1.164 → 0.867, 4,32,4,2048,80 0.318 → 0.249; 16,12,12,2048,64
// 0.320 → 0.327, 16,12,1 0.287 → 0.303: ATTENTION_NOTES log 20). hd is the kernel's width (hd
// 80 runs the hd-128 kernel). Measurement switch: MLKV_ATTN_FWD_SPLIT_KV=0 or =1 forces either.
bool ws_forward_split_kv(int hd) {
  const int forced = env_switch("MLKV_ATTN_FWD_SPLIT_KV");
  return forced < 0 ? hd != 64 : forced == 1;
}

// Measurement switch: MLKV_ATTN_PINGPONG=0 turns the ping-pong off (read once).
bool ws_pingpong() {
  static const bool on = env_switch("MLKV_ATTN_PINGPONG") != 0;
  return on;
}

void forward_sm90_ws(void* out, float* lse, const void* q, const void* k, const void* v, int B, int T, int H,
                     int KVH, int hd, cudaStream_t stream) {
  switch (hd) {
    // K/V tiles of 128, 128, 64 keys; shared memory Q + NS stages of K and V = 112, 160, 192 KB.
    // Measured against 3 consumer warpgroups (hd 64, 128) and 80-key tiles (hd 256), and
    // persistent against not (5 % faster at hd 64, 2-5 % slower at 128 and 256): ATTENTION_NOTES
    // log 12.
    case 64: launch_fwd_ws<64, 128, 3, true>(out, lse, q, k, v, B, T, H, KVH, stream); break;
    case 80: launch_fwd_ws<128, 128, 2, false, 80>(out, lse, q, k, v, B, T, H, KVH, stream); break;
    case 128: launch_fwd_ws<128, 128, 2, false>(out, lse, q, k, v, B, T, H, KVH, stream); break;
    case 256: launch_fwd_ws<256, 64, 2, false>(out, lse, q, k, v, B, T, H, KVH, stream); break;
    default: throw Error("attention: the warp-specialised forward has no head dim " + std::to_string(hd));
  }
}

}  // namespace mlkv::cuda::attn
