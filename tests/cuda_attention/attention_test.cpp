// The CUDA MLKV attention kernels against a float64 host reference: forward (out, lse) and
// backward (dq assigned; dk, dv accumulated) for every head dim, GQA/MQA/MLKV group sizes,
// sequence lengths that are and are not multiples of the tiles, accumulation across several
// "layers" sharing one K/V, bitwise determinism, and the errors for unsupported shapes.
// Inputs are fresh random bf16 values; outputs are poisoned with NaN before each run so that an
// unwritten element fails. Skips cleanly when no GPU is present.
#include <gtest/gtest.h>

#ifdef MLKV_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/errors.h"
#include "kernels/cuda/attention.h"
#include "tests/cuda_attention/attention_ref.h"

namespace {

using mlkv::test::AttnShape;
using mlkv::test::bf16_to_f32;

bool have_gpu() {
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
void poison(DevBuf& d) { ASSERT_EQ(cudaMemset(d.p, 0xff, d.bytes), cudaSuccess); }  // NaN in bf16 and fp32

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

std::string name(const AttnShape& s) {
  return "B" + std::to_string(s.B) + "_T" + std::to_string(s.T) + "_H" + std::to_string(s.H) + "_KVH" +
         std::to_string(s.KVH) + "_hd" + std::to_string(s.hd);
}

void expect_close(const char* what, const Err& e, const AttnShape& s, double rel_tol = 1e-2,
                  double max_tol = 4e-2) {
  EXPECT_EQ(e.nonfinite, 0u) << what << " " << name(s) << ": unwritten or non-finite elements";
  EXPECT_LE(e.rel, rel_tol) << what << " " << name(s) << " rel-L2";
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
    mlkv::test::random_bf16(rng, s.q_elems(), 1.5f, qb, q);
    mlkv::test::random_bf16(rng, s.kv_elems(), 1.0f, kb, k);
    mlkv::test::random_bf16(rng, s.kv_elems(), 1.0f, vb, v);
    mlkv::test::random_bf16(rng, s.q_elems(), 1.0f, dob, dout);
    upload(dq_in, qb);
    upload(dk_in, kb);
    upload(dv_in, vb);
    upload(ddo, dob);
  }
};

// Selects a kernel family for one test and restores the default afterwards.
struct KernelFamily {
  explicit KernelFamily(bool sm90) { mlkv::cuda::attention_use_sm90(sm90); }
  ~KernelFamily() { mlkv::cuda::attention_use_sm90(true); }
};

void check_case(const AttnShape& s);

class AttentionCase : public ::testing::TestWithParam<AttnShape> {};

// The default family: the Hopper wgmma kernels on an H100/H200 built with sm_90a code.
TEST_P(AttentionCase, ForwardBackwardMatchReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KernelFamily family(true);
  std::printf("  [%s kernels]\n", mlkv::cuda::attention_sm90_active() ? "sm90 wgmma" : "mma.sync");
  check_case(GetParam());
}

// The portable mma.sync kernels (the fallback off Hopper), forced.
TEST_P(AttentionCase, MmaSyncKernelsMatchReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KernelFamily family(false);
  check_case(GetParam());
}

void check_case(const AttnShape& s) {
  std::mt19937_64 rng(0x5eed0000ull + s.T * 131 + s.hd * 7 + s.H * 3 + s.KVH);
  Inputs in(s, rng);

  // ---- forward
  DevBuf out(s.q_elems() * 2), lse(s.vec_elems() * 4);
  poison(out);
  poison(lse);
  mlkv::cuda::attention_forward(out.p, lse.as<float>(), in.dq_in.p, in.dk_in.p, in.dv_in.p, s.B, s.T, s.H, s.KVH,
                                s.hd, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<double> ref_out, ref_lse;
  mlkv::test::ref_forward(s, in.q.data(), in.k.data(), in.v.data(), ref_out, ref_lse);
  const auto out_h = download<uint16_t>(out, s.q_elems());
  const auto lse_h = download<float>(lse, s.vec_elems());
  expect_close("out", compare(s.q_elems(), [&](size_t i) { return double(bf16_to_f32(out_h[i])); }, ref_out), s);
  {
    Err e = compare(s.vec_elems(), [&](size_t i) { return double(lse_h[i]); }, ref_lse);
    EXPECT_EQ(e.nonfinite, 0u) << "lse " << name(s);
    EXPECT_LE(e.max_abs, 2e-3) << "lse " << name(s);
  }

  // ---- backward: dk, dv start from random values (the accumulate contract), dq poisoned.
  std::vector<float> dk0(s.kv_elems()), dv0(s.kv_elems());
  std::normal_distribution<float> nd(0.f, 0.5f);
  for (auto& x : dk0) x = nd(rng);
  for (auto& x : dv0) x = nd(rng);
  DevBuf dq(s.q_elems() * 2), dk(s.kv_elems() * 4), dv(s.kv_elems() * 4);
  poison(dq);
  upload(dk, dk0);
  upload(dv, dv0);
  mlkv::cuda::attention_backward(dq.p, dk.as<float>(), dv.as<float>(), in.ddo.p, in.dq_in.p, in.dk_in.p,
                                 in.dv_in.p, out.p, lse.as<float>(), s.B, s.T, s.H, s.KVH, s.hd, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<double> rdq, rdk, rdv;
  mlkv::test::ref_backward(s, in.q.data(), in.k.data(), in.v.data(), in.dout.data(), rdq, rdk, rdv);
  const auto dq_h = download<uint16_t>(dq, s.q_elems());
  const auto dk_h = download<float>(dk, s.kv_elems());
  const auto dv_h = download<float>(dv, s.kv_elems());
  expect_close("dq", compare(s.q_elems(), [&](size_t i) { return double(bf16_to_f32(dq_h[i])); }, rdq), s);
  expect_close("dk", compare(s.kv_elems(), [&](size_t i) { return double(dk_h[i]) - dk0[i]; }, rdk), s);
  expect_close("dv", compare(s.kv_elems(), [&](size_t i) { return double(dv_h[i]) - dv0[i]; }, rdv), s);

  // ---- determinism: the same call again from the same starting buffers is bitwise identical.
  poison(dq);
  upload(dk, dk0);
  upload(dv, dv0);
  mlkv::cuda::attention_backward(dq.p, dk.as<float>(), dv.as<float>(), in.ddo.p, in.dq_in.p, in.dk_in.p,
                                 in.dv_in.p, out.p, lse.as<float>(), s.B, s.T, s.H, s.KVH, s.hd, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_TRUE(download<uint16_t>(dq, s.q_elems()) == dq_h) << "dq not deterministic " << name(s);
  EXPECT_TRUE(download<float>(dk, s.kv_elems()) == dk_h) << "dk not deterministic " << name(s);
  EXPECT_TRUE(download<float>(dv, s.kv_elems()) == dv_h) << "dv not deterministic " << name(s);
}

// B, T, H, KVH, hd: every head dim; MHA, GQA, MQA groups; T = 1, tile multiples and ragged tails.
INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionCase,
    ::testing::Values(AttnShape{1, 1, 2, 1, 64}, AttnShape{2, 17, 4, 4, 64}, AttnShape{1, 64, 4, 1, 64},
                      AttnShape{2, 200, 6, 2, 64}, AttnShape{1, 129, 12, 1, 64}, AttnShape{1, 1100, 2, 1, 64},
                      AttnShape{2, 77, 4, 2, 80}, AttnShape{1, 257, 6, 3, 80}, AttnShape{1, 130, 8, 8, 128},
                      AttnShape{2, 191, 4, 1, 128}, AttnShape{1, 2048, 2, 1, 128}, AttnShape{1, 300, 2, 2, 256},
                      AttnShape{2, 65, 4, 1, 256}, AttnShape{1, 31, 3, 1, 256}),
    [](const ::testing::TestParamInfo<AttnShape>& info) { return name(info.param); });

// MLKV across layers: three layers with their own q and dout read one shared K/V; their
// backward calls accumulate into one fp32 group buffer, which must equal the sum of the three
// reference gradients.
TEST(Attention, AccumulatesAcrossLayersSharingKV) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const AttnShape s{2, 150, 4, 2, 64};
  std::mt19937_64 rng(77);
  Inputs shared(s, rng);  // its k, v are the group's; its q, dout are layer 0's
  DevBuf dk(s.kv_elems() * 4), dv(s.kv_elems() * 4);
  CUDA_OK(cudaMemset(dk.p, 0, dk.bytes));
  CUDA_OK(cudaMemset(dv.p, 0, dv.bytes));
  std::vector<double> sum_dk(s.kv_elems(), 0.0), sum_dv(s.kv_elems(), 0.0);
  for (int layer = 0; layer < 3; ++layer) {
    Inputs own(s, rng);  // fresh q and dout for this layer
    const Inputs& L = layer == 0 ? shared : own;
    DevBuf out(s.q_elems() * 2), lse(s.vec_elems() * 4), dq(s.q_elems() * 2);
    mlkv::cuda::attention_forward(out.p, lse.as<float>(), L.dq_in.p, shared.dk_in.p, shared.dv_in.p, s.B, s.T, s.H,
                                  s.KVH, s.hd, nullptr);
    mlkv::cuda::attention_backward(dq.p, dk.as<float>(), dv.as<float>(), L.ddo.p, L.dq_in.p, shared.dk_in.p,
                                   shared.dv_in.p, out.p, lse.as<float>(), s.B, s.T, s.H, s.KVH, s.hd, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<double> rdq;
    mlkv::test::ref_backward(s, L.q.data(), shared.k.data(), shared.v.data(), L.dout.data(), rdq, sum_dk, sum_dv);
  }
  const auto dk_h = download<float>(dk, s.kv_elems());
  const auto dv_h = download<float>(dv, s.kv_elems());
  expect_close("dk", compare(s.kv_elems(), [&](size_t i) { return double(dk_h[i]); }, sum_dk), s);
  expect_close("dv", compare(s.kv_elems(), [&](size_t i) { return double(dv_h[i]); }, sum_dv), s);
}

TEST(Attention, RejectsUnsupportedShapes) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  DevBuf buf(1 << 20);
  float* f = buf.as<float>();
  EXPECT_THROW(mlkv::cuda::attention_forward(buf.p, f, buf.p, buf.p, buf.p, 1, 8, 2, 1, 96, nullptr), mlkv::Error);
  EXPECT_THROW(mlkv::cuda::attention_forward(buf.p, f, buf.p, buf.p, buf.p, 1, 8, 3, 2, 64, nullptr), mlkv::Error);
  EXPECT_THROW(mlkv::cuda::attention_backward(buf.p, f, f, buf.p, buf.p, buf.p, buf.p, buf.p, f, 1, 8, 2, 1, 48,
                                              nullptr),
               mlkv::Error);
  EXPECT_FALSE(mlkv::cuda::attention_supports_head_dim(96));
  EXPECT_TRUE(mlkv::cuda::attention_supports_head_dim(80));
}

}  // namespace

#else  // CPU-only build

TEST(Attention, NeedsCuda) { GTEST_SKIP() << "built without CUDA"; }

#endif
