// Decoding ops with a KV cache (core/backend.h "decoding"), fp32 reference. Cache k/v[B, KVH, C, hd].
// Every loop follows the full forward's order (rope.cpp, attention.cpp) so that a decoded token's
// logits equal the full forward's bit for bit where the arithmetic allows (the exactness tests).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/rope_table.h"

namespace mlkv {

using cpu_rope::RopeTable;
using cpu_rope::rotate;

namespace {
int max_pos(const int32_t* pos, int B) { return B > 0 ? *std::max_element(pos, pos + B) : 0; }
}  // namespace

void CpuBackend::kv_cache_store(void* k_cache, void* v_cache, const void* k, const void* v, int B, int KVH, int T,
                                int C, int hd) {
  const int64_t row = int64_t{T} * hd, cache_row = int64_t{C} * hd;
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int g = 0; g < KVH; ++g) {
      const int64_t bg = int64_t{b} * KVH + g;
      std::copy_n(static_cast<const float*>(k) + bg * row, row, static_cast<float*>(k_cache) + bg * cache_row);
      std::copy_n(static_cast<const float*>(v) + bg * row, row, static_cast<float*>(v_cache) + bg * cache_row);
    }
}

void CpuBackend::qkv_rope_append(void* q_, void* k_cache, void* v_cache, const void* qkv_, const int32_t* pos,
                                 int B, int H, int KVH, int hd, int C, int rot, float base, bool rotate_k) {
  const float* qkv = static_cast<const float*>(qkv_);
  float *q = static_cast<float*>(q_), *kc = static_cast<float*>(k_cache), *vc = static_cast<float*>(v_cache);
  const RopeTable rt(max_pos(pos, B) + 1, rot, base);
  const int64_t row = int64_t{H + 2 * KVH} * hd;
#pragma omp parallel for schedule(static)
  for (int b = 0; b < B; ++b) {
    const int t = pos[b];
    const float* src = qkv + b * row;
    for (int h = 0; h < H; ++h) rotate(q + (int64_t{b} * H + h) * hd, src + h * hd, hd, rt, t, 1.0f);
    for (int g = 0; g < KVH; ++g) {
      const int64_t at = ((int64_t{b} * KVH + g) * C + t) * hd;
      if (rotate_k) rotate(kc + at, src + (H + g) * hd, hd, rt, t, 1.0f);
      else std::copy_n(src + (H + g) * hd, hd, kc + at);
      std::copy_n(src + (H + KVH + g) * hd, hd, vc + at);
    }
  }
}

void CpuBackend::decode_attention(void* out_, const void* q_, const void* k_cache, const void* v_cache,
                                  const int32_t* pos, int B, int H, int KVH, int hd, int C, int rot_k, float base) {
  float* out = static_cast<float*>(out_);
  const float *q = static_cast<const float*>(q_), *kc = static_cast<const float*>(k_cache),
              *vc = static_cast<const float*>(v_cache);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int group = H / KVH;
  const RopeTable rt(rot_k > 0 ? max_pos(pos, B) + 1 : 0, rot_k, base);
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const int t = pos[b];
      const float* kb = kc + (int64_t{b} * KVH + h / group) * C * hd;
      const float* vb = vc + (int64_t{b} * KVH + h / group) * C * hd;
      const float* qt = q + (int64_t{b} * H + h) * hd;
      std::vector<float> p(size_t(t) + 1), krot(rot_k > 0 ? hd : 0);
      float mx = -std::numeric_limits<float>::infinity();
      for (int s = 0; s <= t; ++s) {
        const float* ks = kb + int64_t{s} * hd;
        if (rot_k > 0) {
          rotate(krot.data(), ks, hd, rt, s, 1.0f);
          ks = krot.data();
        }
        float dotv = 0;
        for (int e = 0; e < hd; ++e) dotv += qt[e] * ks[e];
        p[s] = dotv * scale;
        mx = std::max(mx, p[s]);
      }
      double denom = 0;
      for (int s = 0; s <= t; ++s) denom += (p[s] = std::exp(p[s] - mx));
      float* o = out + (int64_t{b} * H + h) * hd;
      for (int e = 0; e < hd; ++e) o[e] = 0;
      const float inv = static_cast<float>(1.0 / denom);
      for (int s = 0; s <= t; ++s)
        for (int e = 0; e < hd; ++e) o[e] += p[s] * inv * vb[int64_t{s} * hd + e];
    }
}

void CpuBackend::argmax_rows(int32_t* ids, const void* logits_, int64_t N, int64_t V) {
  const float* logits = static_cast<const float*>(logits_);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* row = logits + n * V;
    int64_t best = 0;
    for (int64_t j = 1; j < V; ++j)
      if (row[j] > row[best]) best = j;
    ids[n] = static_cast<int32_t>(best);
  }
}

}  // namespace mlkv
