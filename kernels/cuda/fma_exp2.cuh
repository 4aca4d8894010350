// 2^x for x ≤ 0 on the FMA pipe instead of the special-function unit, whose 16 results a clock
// per SM take as long as the tensor work in the hd-64 attention forward (FlashAttention-4's
// remedy; kernels/cuda/ATTENTION_NOTES.md log 21). Host and device: the host build is what CI
// checks (tests/cuda_attention/fma_exp2_test.cpp), the device build what the kernels run; both
// take the same float operations in the same order.
//
// x = j + f with j = round(x) and f in [-0.5, 0.5]: adding 1.5·2^23 + 127 leaves j + 127 in t's
// low mantissa bits, which shifted into the exponent field make 2^j; 2^f by a cubic fitted to the
// relative error (at most 7.5e-5, below bf16's half-ulp of 2e-3). x at or below -126.5 (a masked
// key's -inf included) rounds to j = -127, whose exponent field 0 makes 2^j and the result
// exactly 0, as ex2.approx.ftz flushes what is below 2^-126. 2^j is a float multiply rather than
// an integer add into p's exponent: with the add, ptxas serialises the wgmma products around the
// softmax (C7511).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define MLKV_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MLKV_HOST_DEVICE inline
#endif

namespace mlkv::cuda::attn {

MLKV_HOST_DEVICE float fma_exp2(float x) {
  constexpr float kRound = 12582912.f + 127.f;  // 1.5·2^23, plus the exponent bias
  x = fmaxf(x, -127.f);
#ifdef __CUDA_ARCH__
  // _rn: no contraction into an FMA, which would skip the rounding to an integer.
  const float t = __fadd_rn(x, kRound);
  const float f = __fsub_rn(x, __fsub_rn(t, kRound));
  const float two_j = __uint_as_float(__float_as_uint(t) << 23);
#else
  const float t = x + kRound;
  const float f = x - (t - kRound);
  uint32_t bits;  // memcpy, not std::bit_cast: the CUDA sources are C++17
  std::memcpy(&bits, &t, sizeof bits);
  bits <<= 23;
  float two_j;
  std::memcpy(&two_j, &bits, sizeof two_j);
#endif
  const float p = fmaf(fmaf(fmaf(0.0551716685f, f, 0.24261114f), f, 0.693260968f), f, 0.999928057f);
  return two_j * p;
}

}  // namespace mlkv::cuda::attn
