// Head split of the attention dK/dV kernels (attention_launch.cuh says why): how many slices to
// cut a KV head's group of query heads into, and the fixed-order sum of the slices' fp32 partials
// into the caller's dk, dv [B, KVH, T, hd].
#include <algorithm>
#include <atomic>
#include <string>

#include "core/env.h"
#include "core/logging.h"
#include "kernels/cuda/attention_launch.cuh"

namespace mlkv::cuda::attn {
namespace {

// dk[i] += p_1[i] + … + p_{S-1}[i], dv likewise; float4 per thread (hd is a multiple of 4).
__global__ void add_dkdv_partials_kernel(float4* __restrict__ dk, float4* __restrict__ dv,
                                         const float4* __restrict__ pk, const float4* __restrict__ pv, int64_t n4,
                                         int n_parts) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n4; i += int64_t(gridDim.x) * blockDim.x) {
    float4 sk = pk[i], sv = pv[i];
    for (int s = 1; s < n_parts; ++s) {
      const float4 a = pk[s * n4 + i], c = pv[s * n4 + i];
      sk.x += a.x, sk.y += a.y, sk.z += a.z, sk.w += a.w;
      sv.x += c.x, sv.y += c.y, sv.z += c.z, sv.w += c.w;
    }
    float4 k = dk[i], v = dv[i];
    k.x += sk.x, k.y += sk.y, k.z += sk.z, k.w += sk.w;
    v.x += sv.x, v.y += sv.y, v.z += sv.z, v.w += sv.w;
    dk[i] = k;
    dv[i] = v;
  }
}

}  // namespace

int forced_divisor(const char* var, int of) {
  const long forced = env_int(var, 0);
  if (forced > 0 && of % forced == 0) return int(forced);
  if (forced != 0) {
    // A measurement taken with a value the shape cannot take would otherwise measure the
    // default under the forced value's name.
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true))
      log::warn(std::string(var) + "=" + std::to_string(forced) + " does not divide " + std::to_string(of) +
                " (or is negative): the default instead (warned once)");
  }
  return 0;
}

DkdvSplit choose_dkdv_split(int B, int T, int H, int KVH, int key_tile, bool short_blocks) {
  const int group = H / KVH;
  DkdvSplit sp;
  if (const int forced = forced_divisor("MLKV_ATTN_BWD_SPLIT", group)) {
    sp.split = forced;
  } else {
    const int64_t blocks = int64_t(B) * KVH * ((T + key_tile - 1) / key_tile);
    // Enough blocks: 1.5 per SM. With the longest blocks started first, the light tail blocks
    // then fill the gaps, and the imbalance left is smaller than a split's cost (its partials'
    // round trip through memory and the extra K/V loads). Measured: see ATTENTION_NOTES.md.
    const int64_t want = 3 * int64_t(sm_count()) / 2, plenty = 8 * int64_t(sm_count());
    sp.split = group;
    for (int s = 1; s <= group; ++s)
      if (group % s == 0 && blocks * s >= want &&
          (!short_blocks || group / s <= 2 || blocks * s >= plenty)) {
        sp.split = s;
        break;
      }
  }
  sp.heads_per = group / sp.split;
  return sp;
}

L2Sections l2_sections(int64_t unit_bytes, int64_t units, double l2_fraction) {
  const long mib = env_int("MLKV_ATTN_L2_MIB", -1);
  const int64_t budget = mib >= 0 ? int64_t(mib) << 20 : int64_t(double(l2_bytes()) * l2_fraction);
  units = std::max<int64_t>(units, 1);
  if (budget == 0) return {1, int(units), 1};
  const int64_t most = std::clamp<int64_t>(budget / std::max<int64_t>(unit_bytes, 1), 1, units);
  const int64_t count = (units + most - 1) / most;
  if (env_int("MLKV_ATTN_L2_EVEN", 1) == 0)  // full sections, then the rest in one
    return {int(units / most), int(most), int(std::max<int64_t>(units % most, 1))};
  // count sections: units % count of them one unit larger than the rest
  const int64_t small = units / count, big = units % count;
  return big == 0 ? L2Sections{int(count), int(small), 1} : L2Sections{int(big), int(small + 1), int(small)};
}

size_t dkdv_partial_floats(const DkdvSplit& sp, int B, int T, int KVH, int hd) {
  return size_t(2) * (sp.split - 1) * B * KVH * T * hd;
}

void add_dkdv_partials(float* dk, float* dv, const DkdvSplit& sp, int B, int T, int KVH, int hd,
                       cudaStream_t stream) {
  if (sp.split <= 1) return;
  const int64_t n4 = int64_t(B) * KVH * T * hd / 4;
  const int threads = 256;
  const int blocks = int(std::min<int64_t>((n4 + threads - 1) / threads, 8 * int64_t(sm_count())));
  add_dkdv_partials_kernel<<<blocks, threads, 0, stream>>>(
      reinterpret_cast<float4*>(dk), reinterpret_cast<float4*>(dv), reinterpret_cast<const float4*>(sp.part_k),
      reinterpret_cast<const float4*>(sp.part_v), n4, sp.split - 1);
  check_launch("add_dkdv_partials_kernel");
}

}  // namespace mlkv::cuda::attn
