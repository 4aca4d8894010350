// Device-side helpers of the attention tests (ours and cuDNN's): device buffers, upload/download,
// NaN poisoning, error measures against the float64 reference of attention_ref.h, and one call's
// random bf16 inputs on host and device.
#pragma once
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "tests/cuda_attention/attention_ref.h"

namespace mlkv::test {

inline bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x << ": " << cudaGetErrorString(cudaGetLastError())

// Device buffer of bytes, freed on scope exit.
struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit DevBuf(size_t n) : bytes(n) {
    if (cudaMalloc(&p, n) != cudaSuccess) p = nullptr;
  }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

template <typename T>
void upload(DevBuf& d, const std::vector<T>& h) {
  ASSERT_NE(d.p, nullptr);
  ASSERT_EQ(cudaMemcpy(d.p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
}
template <typename T>
std::vector<T> download(const DevBuf& d, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), d.p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}
inline void poison(DevBuf& d) { ASSERT_EQ(cudaMemset(d.p, 0xff, d.bytes), cudaSuccess); }  // NaN in bf16 and fp32

struct Err {
  double rel = 0, max_abs = 0, ref_max = 0;
  size_t nonfinite = 0;
};
// got vs ref over n values: ‖got − ref‖ / ‖ref‖, max |got − ref|, max |ref|, non-finite count.
template <typename Get>
Err compare(size_t n, Get got, const std::vector<double>& ref) {
  Err e;
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double g = got(i);
    if (!std::isfinite(g)) {
      ++e.nonfinite;
      continue;
    }
    const double d = g - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
    e.max_abs = std::max(e.max_abs, std::fabs(d));
    e.ref_max = std::max(e.ref_max, std::fabs(ref[i]));
  }
  e.rel = std::sqrt(num / std::max(den, 1e-300));
  return e;
}

inline std::string name(const AttnShape& s) {
  return "B" + std::to_string(s.B) + "_T" + std::to_string(s.T) + "_H" + std::to_string(s.H) + "_KVH" +
         std::to_string(s.KVH) + "_hd" + std::to_string(s.hd);
}

inline void expect_close(const char* what, const Err& e, const AttnShape& s, double rel_tol = 1e-2,
                  double max_tol = 4e-2) {
  EXPECT_EQ(e.nonfinite, 0u) << what << " " << name(s) << ": unwritten or non-finite elements";
  // A reference that is exactly zero (T = 1: dS = P∘(dP − D) cancels) has no relative error;
  // the absolute bound below still applies to it.
  if (e.ref_max > 0) {
    EXPECT_LE(e.rel, rel_tol) << what << " " << name(s) << " rel-L2";
  }
  EXPECT_LE(e.max_abs, max_tol * e.ref_max + 1e-4) << what << " " << name(s) << " max-abs (ref max " << e.ref_max
                                                  << ")";
  std::printf("  %-28s %-4s rel %.2e  max-abs %.2e  (ref max %.2e)\n", name(s).c_str(), what, e.rel, e.max_abs,
              e.ref_max);
}

// Inputs of one attention call, host and device.
struct Inputs {
  AttnShape s;
  std::vector<uint16_t> qb, kb, vb, dob;
  std::vector<float> q, k, v, dout;
  DevBuf dq_in, dk_in, dv_in, ddo;
  Inputs(const AttnShape& shape, std::mt19937_64& rng)
      : s(shape),
        dq_in(shape.q_elems() * 2),
        dk_in(shape.kv_elems() * 2),
        dv_in(shape.kv_elems() * 2),
        ddo(shape.q_elems() * 2) {
    // sd 1.5 for q gives a mix of peaked and flat softmax rows after the 1/sqrt(hd) scale.
    random_bf16(rng, s.q_elems(), 1.5f, qb, q);
    random_bf16(rng, s.kv_elems(), 1.0f, kb, k);
    random_bf16(rng, s.kv_elems(), 1.0f, vb, v);
    random_bf16(rng, s.q_elems(), 1.0f, dob, dout);
    upload(dq_in, qb);
    upload(dk_in, kb);
    upload(dv_in, vb);
    upload(ddo, dob);
  }
};

// The attention.h contract, as both implementations spell it (ours and cudnn_attention.h).
using AttnForward = void (*)(void*, float*, const void*, const void*, const void*, int, int, int, int, int,
                             cudaStream_t);
using AttnBackward = void (*)(void*, float*, float*, const void*, const void*, const void*, const void*,
                              const void*, const float*, int, int, int, int, int, bool, cudaStream_t);

// One forward call's outputs (NaN-poisoned first), run and checked against the reference;
// lse to 2e-3 absolute: the natural-log log-sum-exp of the scaled scores.
struct Forward {
  DevBuf out, lse;
  explicit Forward(const AttnShape& s) : out(s.q_elems() * 2), lse(s.vec_elems() * 4) {
    poison(out);
    poison(lse);
  }
  void run(AttnForward forward, const AttnShape& s, const Inputs& in) {
    forward(out.p, lse.as<float>(), in.dq_in.p, in.dk_in.p, in.dv_in.p, s.B, s.T, s.H, s.KVH, s.hd, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
  }
  void check(const AttnShape& s, const Inputs& in) const {
    std::vector<double> ref_out, ref_lse;
    ref_forward(s, in.q.data(), in.k.data(), in.v.data(), ref_out, ref_lse);
    const auto out_h = download<uint16_t>(out, s.q_elems());
    const auto lse_h = download<float>(lse, s.vec_elems());
    expect_close("out", compare(s.q_elems(), [&](size_t i) { return double(bf16_to_f32(out_h[i])); }, ref_out), s);
    const Err e = compare(s.vec_elems(), [&](size_t i) { return double(lse_h[i]); }, ref_lse);
    EXPECT_EQ(e.nonfinite, 0u) << "lse " << name(s);
    EXPECT_LE(e.max_abs, 2e-3) << "lse " << name(s);
  }
};

// How a backward call treats dk, dv: adds into the sums they hold, or assigns them.
enum class DkdvMode { accumulate, assign };

// One backward call: dq poisoned; dk and dv starting at random sums (accumulate) or poisoned
// (assign: an element read or left unwritten stays NaN); run() downloads the results, check()
// compares dq and the increments of dk, dv to the reference.
struct Backward {
  DkdvMode mode;
  std::vector<float> dk0, dv0;
  DevBuf dq, dk, dv;
  std::vector<uint16_t> dq_h;
  std::vector<float> dk_h, dv_h;
  Backward(const AttnShape& s, std::mt19937_64& rng, DkdvMode m = DkdvMode::accumulate)
      : mode(m),
        dk0(s.kv_elems()),
        dv0(s.kv_elems()),
        dq(s.q_elems() * 2),
        dk(s.kv_elems() * 4),
        dv(s.kv_elems() * 4) {
    std::normal_distribution<float> nd(0.f, 0.5f);
    for (auto& x : dk0) x = mode == DkdvMode::accumulate ? nd(rng) : 0.f;
    for (auto& x : dv0) x = mode == DkdvMode::accumulate ? nd(rng) : 0.f;
  }
  void run(AttnBackward backward, const AttnShape& s, const Inputs& in, const Forward& f) {
    poison(dq);
    if (mode == DkdvMode::accumulate) {
      upload(dk, dk0);
      upload(dv, dv0);
    } else {
      poison(dk);
      poison(dv);
    }
    backward(dq.p, dk.as<float>(), dv.as<float>(), in.ddo.p, in.dq_in.p, in.dk_in.p, in.dv_in.p, f.out.p,
             f.lse.as<float>(), s.B, s.T, s.H, s.KVH, s.hd, mode == DkdvMode::accumulate, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    dq_h = download<uint16_t>(dq, s.q_elems());
    dk_h = download<float>(dk, s.kv_elems());
    dv_h = download<float>(dv, s.kv_elems());
  }
  void check(const AttnShape& s, const Inputs& in) const {
    std::vector<double> rdq, rdk, rdv;
    ref_backward(s, in.q.data(), in.k.data(), in.v.data(), in.dout.data(), rdq, rdk, rdv);
    expect_close("dq", compare(s.q_elems(), [&](size_t i) { return double(bf16_to_f32(dq_h[i])); }, rdq), s);
    expect_close("dk", compare(s.kv_elems(), [&](size_t i) { return double(dk_h[i]) - dk0[i]; }, rdk), s);
    expect_close("dv", compare(s.kv_elems(), [&](size_t i) { return double(dv_h[i]) - dv0[i]; }, rdv), s);
  }
};

// MLKV across layers: three layers with their own q and dout read one shared K/V; as in the
// trainer, the first backward call assigns the fp32 group buffer (poisoned with NaN before it) and
// the other two add into it; it must equal the sum of the three reference gradients; each layer's
// dq must match its own reference.
inline void check_layers_sharing_kv(AttnForward forward, AttnBackward backward, const AttnShape& s, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Inputs shared(s, rng);  // its k, v are the group's; its q, dout are layer 0's
  DevBuf dk(s.kv_elems() * 4), dv(s.kv_elems() * 4);
  poison(dk);
  poison(dv);
  std::vector<double> sum_dk(s.kv_elems(), 0.0), sum_dv(s.kv_elems(), 0.0);
  for (int layer = 0; layer < 3; ++layer) {
    Inputs own(s, rng);  // fresh q and dout for this layer
    const Inputs& L = layer == 0 ? shared : own;
    DevBuf out(s.q_elems() * 2), lse(s.vec_elems() * 4), dq(s.q_elems() * 2);
    forward(out.p, lse.as<float>(), L.dq_in.p, shared.dk_in.p, shared.dv_in.p, s.B, s.T, s.H, s.KVH, s.hd, nullptr);
    backward(dq.p, dk.as<float>(), dv.as<float>(), L.ddo.p, L.dq_in.p, shared.dk_in.p, shared.dv_in.p, out.p,
             lse.as<float>(), s.B, s.T, s.H, s.KVH, s.hd, /*accumulate=*/layer > 0, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<double> rdq;
    ref_backward(s, L.q.data(), shared.k.data(), shared.v.data(), L.dout.data(), rdq, sum_dk, sum_dv);
    const auto dq_h = download<uint16_t>(dq, s.q_elems());
    expect_close("dq", compare(s.q_elems(), [&](size_t i) { return double(bf16_to_f32(dq_h[i])); }, rdq), s);
  }
  const auto dk_h = download<float>(dk, s.kv_elems());
  const auto dv_h = download<float>(dv, s.kv_elems());
  expect_close("dk", compare(s.kv_elems(), [&](size_t i) { return double(dk_h[i]); }, sum_dk), s);
  expect_close("dv", compare(s.kv_elems(), [&](size_t i) { return double(dv_h[i]); }, sum_dv), s);
}

}  // namespace mlkv::test
