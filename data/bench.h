// Reader benchmark and its synthetic data: `mlkv-data make-synthetic` writes shards of
// Zipf-like token ids with documents; `mlkv-data bench` measures tokens/s of one process.
#pragma once
#include <cstdint>
#include <ostream>
#include <string>

#include "data/shard_writer.h"

namespace mlkv::data {

// Writes `tokens` synthetic tokens (skewed like text: low ids frequent, EOD every ~1000).
void make_synthetic(int64_t tokens, ShardWriterOptions writer, uint64_t seed, std::ostream& out);

struct BenchOptions {
  std::string path;
  int64_t seq_len = 2048;
  int64_t batch = 64;
  double seconds = 10.0;  // per measurement
  int prefetch = 4;
};

// Prints (1) sequential block reads over all shards and (2) the Loader's shuffled batches.
void bench_reader(const BenchOptions& options, std::ostream& out);

}  // namespace mlkv::data
