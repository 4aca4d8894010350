// DpPlan arithmetic (see dp_plan.h).
#include "parallel/dp_plan.h"

#include <algorithm>

#include "core/errors.h"

namespace mlkv::parallel {

DpPlan::DpPlan(int64_t P, int dp, double bucket_mb, bool sharded) : dp_(dp) {
  const int64_t unit = sharded ? buffer_multiple(dp) : 64;
  if (dp < 1 || P % unit != 0)
    throw Error("data-parallel plan: buffer of " + std::to_string(P) + " elements is not a multiple of " +
                std::to_string(unit) + " (build the Model with Context::model_parallel())");
  const int64_t want = static_cast<int64_t>(bucket_mb * 1024.0 * 1024.0 / sizeof(float));
  const int64_t B = std::max(unit, want / unit * unit);
  for (int64_t hi = P; hi > 0;) {
    const int64_t lo = std::max<int64_t>(0, hi - B);
    buckets_.push_back({lo, hi, sharded ? (hi - lo) / dp : 0, 0});
    hi = lo;
  }
  // Packed shard order is increasing address: the last bucket (lowest) comes first.
  int64_t off = 0;
  for (auto it = buckets_.rbegin(); it != buckets_.rend(); ++it) {
    it->local_off = off;
    off += it->piece;
  }
  shard_ = off;
}

std::vector<std::pair<int64_t, int64_t>> DpPlan::shard_ranges(int r) const {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (auto it = buckets_.rbegin(); it != buckets_.rend(); ++it)
    out.push_back({it->lo + r * it->piece, it->lo + (r + 1) * it->piece});
  return out;
}

std::vector<DpPlan::Span> DpPlan::spans(int r, int64_t a, int64_t b) const {
  std::vector<Span> out;
  for (auto it = buckets_.rbegin(); it != buckets_.rend(); ++it) {
    const int64_t p0 = it->lo + r * it->piece, p1 = p0 + it->piece;
    const int64_t s = std::max(a, p0), e = std::min(b, p1);
    if (s < e) out.push_back({s, e, it->local_off + (s - p0)});
  }
  return out;
}

}  // namespace mlkv::parallel
