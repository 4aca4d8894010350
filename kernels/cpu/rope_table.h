// Rotary tables and the per-vector rotation shared by the CPU rope ops (rope.cpp) and the
// decode ops (decode.cpp), so a cached token is rotated with exactly the arithmetic of the
// full forward (decoding must equal it to the last bits on the reference backend).
//   For i < rot/2 at position t, angle = t·base^(-2i/rot):
//   out[i] = x[i]·cos − x[i+rot/2]·sin,  out[i+rot/2] = x[i+rot/2]·cos + x[i]·sin.
#pragma once
#include <cmath>
#include <cstddef>
#include <vector>

namespace mlkv::cpu_rope {

struct RopeTable {
  int half;
  std::vector<float> cos, sin;  // [T, half]
  RopeTable(int T, int rot, float base) : half(rot / 2), cos(size_t(T) * half), sin(size_t(T) * half) {
    for (int i = 0; i < half; ++i) {
      // Computed in fp32 the way the HF reference does, so parity holds to the last bits we can.
      const float inv_freq = 1.0f / std::pow(base, static_cast<float>(2 * i) / static_cast<float>(rot));
      for (int t = 0; t < T; ++t) {
        const float a = static_cast<float>(t) * inv_freq;
        cos[size_t(t) * half + i] = std::cos(a);
        sin[size_t(t) * half + i] = std::sin(a);
      }
    }
  }
};

// Rotates one head vector x (length hd) into dst at position t; sign = -1 inverts.
template <typename Src>
inline void rotate(float* dst, const Src* x, int hd, const RopeTable& rt, int t, float sign) {
  for (int e = 0; e < hd; ++e) dst[e] = static_cast<float>(x[e]);
  for (int i = 0; i < rt.half; ++i) {
    const float c = rt.cos[size_t(t) * rt.half + i], s = sign * rt.sin[size_t(t) * rt.half + i];
    const float a = static_cast<float>(x[i]), b = static_cast<float>(x[i + rt.half]);
    dst[i] = a * c - b * s;
    dst[i + rt.half] = b * c + a * s;
  }
}

}  // namespace mlkv::cpu_rope
