// Helpers for checking CUDA ops against the fp32 CPU reference: a fixture holding both backends
// (skipped without a GPU), device buffers that free themselves, bf16-exact random inputs (so both
// backends see identical values and differences come only from the compute), NaN poisoning of
// outputs, and the relative-norm error ‖got − ref‖ / ‖ref‖.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "core/backend.h"
#include "kernels/cuda/cuda_backend.h"

namespace mlkv::test {

// Rounds to the nearest bf16 (ties to even), as __float2bfloat16 does.
inline float bf16_round(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return x;
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&x, &u, 4);
  return x;
}

// One buffer on one backend, released on destruction.
struct Buf {
  Backend* be = nullptr;
  void* p = nullptr;
  Buf() = default;
  Buf(Backend& b, size_t bytes) : be(&b), p(b.alloc(bytes)) {}
  Buf(Buf&& o) noexcept : be(o.be), p(o.p) { o.p = nullptr; }
  Buf& operator=(Buf&& o) noexcept {
    std::swap(be, o.be);
    std::swap(p, o.p);
    return *this;
  }
  ~Buf() {
    if (p) be->release(p);
  }
  float* f() const { return static_cast<float*>(p); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

// Activation buffer (backend dtype) holding `host` (fp32 values, cast on the device).
inline Buf act_buf(Backend& b, const std::vector<float>& host) {
  Buf tmp(b, host.size() * 4), out(b, host.size() * b.act_bytes());
  b.upload(tmp.p, host.data(), host.size() * 4);
  b.cast_f32_to_act(out.p, tmp.f(), static_cast<int64_t>(host.size()));
  b.synchronize();
  return out;
}
inline Buf f32_buf(Backend& b, const std::vector<float>& host) {
  Buf out(b, host.size() * 4);
  b.upload(out.p, host.data(), host.size() * 4);
  return out;
}
template <typename T>
inline Buf raw_buf(Backend& b, const std::vector<T>& host) {
  Buf out(b, host.size() * sizeof(T));
  b.upload(out.p, host.data(), host.size() * sizeof(T));
  return out;
}
inline std::vector<float> read_act(Backend& b, const void* p, size_t n) {
  Buf tmp(b, n * 4);
  b.cast_act_to_f32(tmp.f(), p, static_cast<int64_t>(n));
  std::vector<float> out(n);
  b.download(out.data(), tmp.p, n * 4);
  return out;
}
inline std::vector<float> read_f32(Backend& b, const void* p, size_t n) {
  std::vector<float> out(n);
  b.download(out.data(), p, n * 4);
  return out;
}
// Fills an activation / fp32 buffer with NaN, so elements the op fails to write are caught.
inline void poison_act(Backend& b, void* p, size_t n) {
  Buf src = act_buf(b, std::vector<float>(n, NAN));
  b.copy(p, src.p, n * b.act_bytes());
}
inline void poison_f32(Backend& b, void* p, size_t n) {
  const std::vector<float> nan(n, NAN);
  b.upload(p, nan.data(), n * 4);
}

// Relative L2 error; infinity when any element of got is not finite.
inline double rel_err(const std::vector<float>& got, const std::vector<float>& ref) {
  if (got.size() != ref.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    const double d = double(got[i]) - ref[i];
    num += d * d;
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// Both backends, fresh random inputs every run (the seed is printed for reproduction).
class CudaVsCpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    cpu = make_backend("cpu", 4);
    gpu = make_cuda_backend(0);
    seed = std::random_device{}();
    rng.seed(seed);
    RecordProperty("seed", std::to_string(seed));
    std::printf("[ seed     ] %u\n", seed);
  }
  // n values ~ N(mean, scale²), rounded to bf16 so both backends hold them exactly.
  std::vector<float> randn(size_t n, float scale = 1.0f, float mean = 0.0f) {
    std::normal_distribution<float> d(mean, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = bf16_round(d(rng));
    return v;
  }
  std::vector<int32_t> randint(size_t n, int32_t lo, int32_t hi) {  // [lo, hi)
    std::uniform_int_distribution<int32_t> d(lo, hi - 1);
    std::vector<int32_t> v(n);
    for (auto& x : v) x = d(rng);
    return v;
  }
  std::unique_ptr<Backend> cpu, gpu;
  std::mt19937 rng;
  unsigned seed = 0;
};

}  // namespace mlkv::test
