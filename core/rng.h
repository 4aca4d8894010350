// Rng: a small, portable, seedable generator (splitmix64 + Box-Muller) whose state fits in a
// checkpoint as one integer pair. std::mt19937 distributions differ across standard libraries;
// this one gives the same numbers everywhere, which resume bit-exactness needs.
#pragma once
#include <cmath>
#include <cstdint>

namespace mlkv {

class Rng {
 public:
  explicit Rng(uint64_t seed = 0) : state_(seed) {}
  // The generator after `draws` calls of next_u64() from Rng(seed): splitmix64 is a counter, so
  // any point of the stream is reachable at once, which lets threads fill disjoint parts of one
  // stream and get exactly the numbers a single loop would.
  static Rng skipped(uint64_t seed, uint64_t draws) { return Rng(seed + draws * kGamma); }
  uint64_t next_u64() {
    uint64_t z = (state_ += kGamma);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in (0, 1): never 0, so log() is safe.
  double uniform() { return (static_cast<double>(next_u64() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
  double normal() {
    const double u1 = uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  uint64_t state() const { return state_; }
  void set_state(uint64_t s) { state_ = s; }

 private:
  static constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;
  uint64_t state_;
};

}  // namespace mlkv
