// DpPlan: how the flat gradient buffer is cut into buckets for the data-parallel reduction, and
// which piece of every bucket each DP rank owns under ZeRO-1 (Megatron's distributed-optimizer
// layout: every bucket is reduce-scattered, so a rank's shard is one piece per bucket).
//
//   buffer [0, P): P a multiple of dp·64 (Model pads to ModelParallel::buffer_multiple)
//   buckets, top of the buffer first (the backward produces the last layers' gradients first):
//     [P − B, P), [P − 2B, P − B), …, [0, …)          B = bucket_mb rounded to dp·64 elements
//   piece of rank r in bucket [lo, hi): [lo + r·s, lo + (r+1)·s), s = (hi − lo)/dp (64-aligned)
//   shard of rank r: its pieces in increasing address order, packed (local offsets below).
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

namespace mlkv::parallel {

struct Bucket {
  int64_t lo = 0, hi = 0;   // range of the flat buffer
  int64_t piece = 0;        // (hi − lo) / dp
  int64_t local_off = 0;    // where this bucket's piece sits in a rank's packed shard
};

class DpPlan {
 public:
  DpPlan() = default;
  // sharded = false (plain all-reduce): buckets need only 64-element alignment, no pieces.
  DpPlan(int64_t buffer_elems, int dp, double bucket_mb, bool sharded = true);

  int dp() const { return dp_; }
  const std::vector<Bucket>& buckets() const { return buckets_; }  // top of the buffer first
  int64_t shard_elems() const { return shard_; }                   // the same for every rank
  // [begin, end) ranges of the flat buffer owned by DP rank r, increasing (what ParamLayout::
  // restricted packs, in this order).
  std::vector<std::pair<int64_t, int64_t>> shard_ranges(int r) const;
  // Pieces of rank r intersecting [a, b): (flat begin, flat end, packed-shard offset).
  struct Span {
    int64_t begin, end, local;
  };
  std::vector<Span> spans(int r, int64_t a, int64_t b) const;
  // The buffer multiple a model needs for this many DP ranks.
  static int64_t buffer_multiple(int dp) { return int64_t{64} * dp; }

 private:
  int dp_ = 1;
  int64_t shard_ = 0;
  std::vector<Bucket> buckets_;
};

}  // namespace mlkv::parallel
