// Loader: sample layout, split, sampler stream, open-shard cache and the prefetch thread.
#include "data/loader.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"
#include "data/dataset.h"
#include "data/h5.h"
#include "data/shard_reader.h"

namespace mlkv::data {

namespace {

void check_options(const LoaderOptions& o) {
  auto fail = [](const std::string& what) { throw ConfigError("data loader: " + what); };
  if (o.seq_len < 1) fail("seq_len must be >= 1");
  if (o.global_batch < 1) fail("global_batch must be >= 1");
  if (o.dp_size < 1 || o.dp_rank < 0 || o.dp_rank >= o.dp_size) {
    fail("dp_rank " + std::to_string(o.dp_rank) + " is not in [0, dp_size " +
         std::to_string(o.dp_size) + ")");
  }
  if (o.global_batch % o.dp_size != 0) {
    fail("global_batch " + std::to_string(o.global_batch) + " is not divisible by dp_size " +
         std::to_string(o.dp_size));
  }
  if (o.prefetch < 0) fail("prefetch must be >= 0");
  if (o.split != "train" && o.split != "val") fail("split must be 'train' or 'val'");
  if (!(o.val_fraction >= 0.0 && o.val_fraction < 1.0)) fail("val_fraction must be in [0, 1)");
  if (o.val_fraction > 0.0 && !o.val_path.empty()) {
    fail("give either val_fraction or val_path, not both");
  }
  if (o.split == "val" && o.val_fraction == 0.0 && o.val_path.empty()) {
    fail("split 'val' needs val_fraction > 0 or val_path");
  }
  if (o.stride < 0) fail("stride must be >= 0");
  if (o.max_open_shards < 1) fail("max_open_shards must be >= 1");
  if (o.verify != "auto" && o.verify != "full" && o.verify != "lazy") {
    fail("verify must be 'auto', 'full' or 'lazy', not '" + o.verify + "'");
  }
}

}  // namespace

Loader::Loader(const LoaderOptions& options) : options_(options), order_(1, 0, false) {
  check_options(options_);
  const bool held_out_files = options_.split == "val" && !options_.val_path.empty();
  const std::string& path = held_out_files ? options_.val_path : options_.path;
  DatasetSummary summary = validate_dataset(path, options_.vocab_limit, options_.seq_len);
  shards_ = summary.shards;
  vocab_size_ = summary.vocab_size;
  vocab_limit_ = options_.vocab_limit > 0 ? options_.vocab_limit : summary.vocab_size;
  eod_id_ = static_cast<int32_t>(summary.eod_id);
  const int64_t window = options_.seq_len + 1;
  stride_ = options_.stride > 0                       ? options_.stride
            : summary.sequence_length == window ? window
                                                     : options_.seq_len;
  first_sample_.assign(1, 0);
  for (const ShardInfo& shard : shards_) {
    uint64_t count = static_cast<uint64_t>((shard.num_tokens - window) / stride_ + 1);
    first_sample_.push_back(first_sample_.back() + count);
  }
  const uint64_t total = first_sample_.back();
  split_begin_ = 0;
  split_size_ = total;
  if (options_.val_fraction > 0.0) {
    uint64_t held_out = std::max<uint64_t>(
        1, static_cast<uint64_t>(std::floor(options_.val_fraction * static_cast<double>(total))));
    if (held_out >= total) {
      throw DataError(path + ": " + std::to_string(total) + " samples are too few to hold out " +
                      std::to_string(options_.val_fraction) + " of them for validation");
    }
    if (options_.split == "val") {
      split_begin_ = total - held_out;
      split_size_ = held_out;
    } else {
      split_size_ = total - held_out;
    }
  }
  order_ = SampleOrder(split_size_, options_.seed, options_.shuffle);
  verified_blocks_.resize(shards_.size());
  if (options_.verify == "full" ||
      (options_.verify == "auto" && summary.total_tokens <= kVerifyAtStartTokens)) {
    verify_all();
  }
  start_worker();
}

int64_t Loader::id_limit(size_t shard) const {
  return std::min(vocab_limit_, shards_[shard].vocab_size);
}

// Every token of every shard, before step 1: the chunk checksums (when the shard has them), the
// id limit, and max_token_id (which the start-up check trusts, so a stale one must not pass).
void Loader::verify_all() {
  std::vector<int32_t> tokens;
  for (size_t i = 0; i < shards_.size(); ++i) {
    ShardReader r(shards_[i].path, &verified_blocks_[i]);
    const ShardInfo& info = r.info();
    const int64_t block = info.crc_block_tokens > 0 ? info.crc_block_tokens
                                                    : std::max<int64_t>(info.chunk_tokens, int64_t{1} << 20);
    const int64_t limit = id_limit(i);
    int64_t max_id = -1;
    for (int64_t start = 0; start < info.num_tokens; start += block) {
      const int64_t n = std::min(block, info.num_tokens - start);
      tokens.resize(static_cast<size_t>(n));
      r.read(start, n, tokens.data());
      for (int64_t k = 0; k < n; ++k) {
        const int64_t id = static_cast<uint32_t>(tokens[static_cast<size_t>(k)]);
        max_id = std::max(max_id, id);
        if (id >= limit) {
          throw DataError(info.path + ": token id " + std::to_string(id) + " at token offset " +
                          std::to_string(start + k) + " is >= " +
                          (limit == shards_[i].vocab_size ? "the shard's vocab_size " : "the model's vocab_size ") +
                          std::to_string(limit));
        }
      }
    }
    if (info.has_max_token_id && info.max_token_id != max_id) {
      throw DataError(info.path + ": attribute max_token_id = " + std::to_string(info.max_token_id) +
                      " but the largest id is " + std::to_string(max_id) +
                      " (the file was changed after writing)");
    }
  }
  verified_at_start_ = true;
}

Loader::~Loader() { stop_worker(); }

uint64_t Loader::sample_at(uint64_t epoch, uint64_t position) const {
  // A private SampleOrder: order_ caches per epoch and belongs to the reader thread.
  return SampleOrder(split_size_, options_.seed, options_.shuffle).sample(epoch, position);
}

std::pair<std::string, int64_t> Loader::locate(uint64_t index) const {
  uint64_t global = split_begin_ + index;
  size_t shard = static_cast<size_t>(
      std::upper_bound(first_sample_.begin(), first_sample_.end(), global) -
      first_sample_.begin() - 1);
  return {shards_[shard].path, static_cast<int64_t>(global - first_sample_[shard]) * stride_};
}

ShardReader& Loader::reader(size_t shard) {
  for (auto it = open_readers_.begin(); it != open_readers_.end(); ++it) {
    if (it->first == shard) {
      open_readers_.splice(open_readers_.begin(), open_readers_, it);
      return *open_readers_.front().second;
    }
  }
  if (static_cast<int>(open_readers_.size()) >= options_.max_open_shards) open_readers_.pop_back();
  open_readers_.emplace_front(
      shard, std::make_unique<ShardReader>(shards_[shard].path, &verified_blocks_[shard]));
  return *open_readers_.front().second;
}

SamplerState Loader::advance(const SamplerState& at) const {
  uint64_t next = at.next_sample + static_cast<uint64_t>(options_.global_batch);
  return {at.epoch + next / split_size_, next % split_size_};
}

void Loader::fill(const SamplerState& at, std::vector<int32_t>& tokens) {
  const int64_t window = options_.seq_len + 1;
  const int64_t rows = rows_per_rank();
  tokens.resize(static_cast<size_t>(rows * window));
  uint64_t epoch = at.epoch;
  uint64_t position = at.next_sample + static_cast<uint64_t>(options_.dp_rank * rows);
  epoch += position / split_size_;
  position %= split_size_;
  for (int64_t row = 0; row < rows; ++row) {
    uint64_t global = split_begin_ + order_.sample(epoch, position);
    size_t shard = static_cast<size_t>(
        std::upper_bound(first_sample_.begin(), first_sample_.end(), global) -
        first_sample_.begin() - 1);
    int64_t offset = static_cast<int64_t>(global - first_sample_[shard]) * stride_;
    int32_t* out = tokens.data() + row * window;
    reader(shard).read(offset, window, out);
    const int64_t limit = id_limit(shard);
    for (int64_t i = 0; i < window; ++i) {
      if (static_cast<uint32_t>(out[i]) >= static_cast<uint64_t>(limit)) {
        throw DataError(shards_[shard].path + ": token id " +
                        std::to_string(static_cast<uint32_t>(out[i])) + " at token offset " +
                        std::to_string(offset + i) + " is >= " +
                        (limit == shards_[shard].vocab_size ? "the shard's vocab_size " : "vocab_size ") +
                        std::to_string(limit));
      }
    }
    if (++position == split_size_) {
      position = 0;
      ++epoch;
    }
  }
}

void Loader::next(std::vector<int32_t>& tokens) {
  if (options_.prefetch == 0) {
    fill(consumer_state_, tokens);
    consumer_state_ = advance(consumer_state_);
    return;
  }
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return !queue_.empty() || worker_error_; });
  if (queue_.empty()) std::rethrow_exception(worker_error_);
  Batch batch = std::move(queue_.front());
  queue_.pop_front();
  consumer_state_ = batch.after;
  tokens.swap(batch.tokens);
  spare_buffers_.push_back(std::move(batch.tokens));  // reuse the caller's old buffer
  changed_.notify_all();
}

SamplerState Loader::state() const {
  std::lock_guard lock(mutex_);
  return consumer_state_;
}

void Loader::restore(const SamplerState& state) {
  if (state.next_sample >= split_size_) {
    throw DataError("data loader: sampler state (epoch " + std::to_string(state.epoch) +
                    ", next_sample " + std::to_string(state.next_sample) +
                    ") is past the dataset's " + std::to_string(split_size_) +
                    " samples (was the checkpoint made with other data or seq_len?)");
  }
  stop_worker();
  consumer_state_ = producer_state_ = state;
  start_worker();
}

void Loader::start_worker() {
  if (options_.prefetch == 0) return;
  queue_.clear();
  worker_error_ = nullptr;
  stop_ = false;
  producer_state_ = consumer_state_;
  worker_ = std::thread([this] { worker_loop(); });
}

void Loader::stop_worker() {
  if (!worker_.joinable()) return;
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  worker_.join();
  queue_.clear();
}

void Loader::worker_loop() {
  h5::quiet_errors();
  try {
    for (;;) {
      Batch batch;
      {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] {
          return stop_ || static_cast<int>(queue_.size()) < options_.prefetch;
        });
        if (stop_) return;
        if (!spare_buffers_.empty()) {
          batch.tokens = std::move(spare_buffers_.back());
          spare_buffers_.pop_back();
        }
      }
      fill(producer_state_, batch.tokens);
      batch.after = advance(producer_state_);
      std::lock_guard lock(mutex_);
      producer_state_ = batch.after;
      queue_.push_back(std::move(batch));
      changed_.notify_all();
    }
  } catch (...) {
    std::lock_guard lock(mutex_);
    worker_error_ = std::current_exception();
    changed_.notify_all();
  }
}

}  // namespace mlkv::data
