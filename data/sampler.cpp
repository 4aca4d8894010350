// Feistel permutation with cycle-walking, and the per-epoch sample order built on it.
#include "data/sampler.h"

namespace mlkv::data {

FeistelPermutation::FeistelPermutation(uint64_t n, uint64_t key) : n_(n) {
  // Smallest even bit width 2h with 2^(2h) ≥ n, so the walk leaves [0, n) with chance < 3/4.
  while (half_bits_ < 32 && (uint64_t{1} << (2 * half_bits_)) < n) ++half_bits_;
  half_mask_ = (uint64_t{1} << half_bits_) - 1;
  uint64_t state = key;
  for (uint64_t& round_key : round_keys_) {
    state = mix64(state);
    round_key = state;
  }
}

uint64_t FeistelPermutation::encrypt(uint64_t x) const {
  uint64_t left = x >> half_bits_, right = x & half_mask_;
  for (uint64_t round_key : round_keys_) {
    uint64_t next = left ^ (mix64(right ^ round_key) & half_mask_);
    left = right;
    right = next;
  }
  return (left << half_bits_) | right;
}

uint64_t FeistelPermutation::operator()(uint64_t index) const {
  if (n_ <= 1) return 0;
  uint64_t x = encrypt(index);
  while (x >= n_) x = encrypt(x);  // cycle-walking: stays a bijection on [0, n)
  return x;
}

uint64_t SampleOrder::sample(uint64_t epoch, uint64_t position) const {
  if (!shuffle_) return position;
  if (epoch != cached_epoch_) {
    // Distinct epochs and seeds get unrelated keys (mixing twice separates seed and epoch).
    cached_ = FeistelPermutation(n_, mix64(mix64(seed_) ^ (epoch * 0xD1B54A32D192ED03ull)));
    cached_epoch_ = epoch;
  }
  return cached_(position);
}

}  // namespace mlkv::data
