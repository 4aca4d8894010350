// The global sample order: a pure function of (seed, epoch, position in epoch), computed
// without materialising a permutation. Shuffling uses a keyed Feistel network over the
// smallest power-of-4 domain ≥ n, with cycle-walking back into [0, n): a bijection on [0, n)
// in O(1) memory and a few hash evaluations per sample.
#pragma once
#include <cstdint>

namespace mlkv::data {

// SplitMix64 finalizer: a good 64-bit mixer, used for round keys and the round function.
inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

class FeistelPermutation {
 public:
  FeistelPermutation(uint64_t n, uint64_t key);
  uint64_t size() const { return n_; }
  uint64_t operator()(uint64_t index) const;  // index in [0, n) -> a distinct value in [0, n)

 private:
  uint64_t encrypt(uint64_t x) const;
  static constexpr int kRounds = 6;
  uint64_t n_;
  int half_bits_ = 0;
  uint64_t half_mask_ = 0;
  uint64_t round_keys_[kRounds] = {};
};

// Order of the samples of one split: position p of epoch e -> sample index in [0, n).
class SampleOrder {
 public:
  SampleOrder(uint64_t n, uint64_t seed, bool shuffle) : n_(n), seed_(seed), shuffle_(shuffle) {}
  uint64_t size() const { return n_; }
  uint64_t sample(uint64_t epoch, uint64_t position) const;

 private:
  uint64_t n_;
  uint64_t seed_;
  bool shuffle_;
  // Cache of the last epoch's permutation (cheap to rebuild; avoids rehashing keys per call).
  mutable uint64_t cached_epoch_ = ~uint64_t{0};
  mutable FeistelPermutation cached_{1, 0};
};

}  // namespace mlkv::data
