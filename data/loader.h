// The trainer's data loader: windows of seq_len + 1 tokens from a set of shards, in a global
// order that is a pure function of (seed, epoch, sample index), sliced per data-parallel rank,
// and read ahead by one background thread into a bounded queue.
//
// Samples: shard j of n_j tokens holds windows starting at 0, stride, 2·stride, ... while the
// window fits; windows cross document boundaries (Pythia style) but never shards. stride
// defaults to seq_len (consecutive windows share one token, as in Megatron), or to seq_len + 1
// when the shards hold fixed-length sequences of exactly seq_len + 1 tokens (Pythia's
// pre-shuffled Pile: sample i is then sequence i).
//
// Stream: positions k = 0, 1, 2, ... run through the epochs (epoch = k / N, p = k % N) and
// position p of epoch e reads sample order(e, p). Global batch b is positions
// [b·B, (b+1)·B); rank r takes rows [r·B/dp, (r+1)·B/dp) of it, so any dp gives the same data.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "data/sampler.h"
#include "data/shard_format.h"

namespace mlkv::data {

class ShardReader;

// Goes into checkpoints: the position of the next global batch.
struct SamplerState {
  uint64_t epoch = 0;
  uint64_t next_sample = 0;  // position within the epoch, in [0, num_samples)
  bool operator==(const SamplerState&) const = default;
};

struct LoaderOptions {
  std::string path;          // dir of shards, a single .h5, or a glob
  int64_t seq_len = 0;       // each sample is seq_len + 1 tokens
  int64_t global_batch = 0;  // samples per optimizer step, all DP ranks together
  int dp_rank = 0, dp_size = 1;
  uint64_t seed = 1234;
  bool shuffle = true;
  int prefetch = 4;          // bounded queue depth (batches); 0 reads in the caller's thread
  std::string split = "train";
  double val_fraction = 0.0;  // held-out fraction: the last samples (in shard order) form "val"
  std::string val_path;       // alternatively held-out shards (then "val" reads only these)
  int64_t stride = 0;         // 0: derive (see above)
  int64_t vocab_limit = 0;    // ids must be < this (the model's vocab); 0: shards' vocab_size
  int max_open_shards = 16;   // open-file cache of the reader thread (each compressed shard
                              // also keeps an 8 MiB chunk cache)
  // When every chunk is checked (chunk CRC-32, every id < the limit, max_token_id true):
  //   full  in the constructor, before step 1 (reads the whole dataset once);
  //   lazy  each checksum block the first time a window touches it (ids per window);
  //   auto  full for datasets of at most kVerifyAtStartTokens tokens, else lazy.
  std::string verify = "auto";
};

// auto verifies datasets up to this size up front: 2^27 tokens is ~0.3 s of reading uncompressed
// and a few seconds with gzip (data/README.md, Benchmark).
inline constexpr int64_t kVerifyAtStartTokens = int64_t{1} << 27;

class Loader {
 public:
  // Validates options and data up front. Throws ConfigError (options) or DataError (data,
  // naming file and offset).
  explicit Loader(const LoaderOptions& options);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // Fills this rank's slice of the next global batch: rows_per_rank() rows of seq_len + 1
  // tokens, row-major, int32. Rethrows any error of the reader thread (DataError naming file
  // and offset).
  void next(std::vector<int32_t>& tokens);

  SamplerState state() const;  // of the next batch next() returns
  void restore(const SamplerState& state);
  void reset() { restore(SamplerState{}); }  // back to epoch 0 sample 0 (validation passes)

  int64_t num_samples() const { return static_cast<int64_t>(split_size_); }
  int64_t vocab_size() const { return vocab_size_; }
  int32_t eod_id() const { return eod_id_; }
  int64_t seq_len() const { return options_.seq_len; }
  int64_t stride() const { return stride_; }
  int64_t rows_per_rank() const { return options_.global_batch / options_.dp_size; }
  int64_t num_shards() const { return static_cast<int64_t>(shards_.size()); }
  bool verified_at_start() const { return verified_at_start_; }
  // Where sample `index` (in [0, num_samples)) lives: shard path and token offset.
  std::pair<std::string, int64_t> locate(uint64_t index) const;
  // Sample index at stream position (epoch, position): the sampler alone, no I/O.
  uint64_t sample_at(uint64_t epoch, uint64_t position) const;

 private:
  struct Batch {
    std::vector<int32_t> tokens;
    SamplerState after;
  };
  void fill(const SamplerState& at, std::vector<int32_t>& tokens);
  void verify_all();
  int64_t id_limit(size_t shard) const;  // ids must be below: the model's and the shard's vocab
  SamplerState advance(const SamplerState& at) const;
  ShardReader& reader(size_t shard);
  void start_worker();
  void stop_worker();
  void worker_loop();

  LoaderOptions options_;
  std::vector<ShardInfo> shards_;
  std::vector<uint64_t> first_sample_;  // per shard, plus the total at the end
  uint64_t split_begin_ = 0, split_size_ = 0;
  int64_t stride_ = 0;
  int64_t vocab_size_ = 0, vocab_limit_ = 0;
  int32_t eod_id_ = -1;
  SampleOrder order_;
  bool verified_at_start_ = false;
  std::vector<std::vector<uint8_t>> verified_blocks_;  // per shard: checksum blocks checked

  // Reader thread state (only the worker touches the readers).
  std::list<std::pair<size_t, std::unique_ptr<ShardReader>>> open_readers_;  // LRU, front = newest
  std::thread worker_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Batch> queue_;
  std::vector<std::vector<int32_t>> spare_buffers_;
  std::exception_ptr worker_error_;
  bool stop_ = false;
  SamplerState consumer_state_, producer_state_;
};

}  // namespace mlkv::data
