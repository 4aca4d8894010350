// make-synthetic and bench.
#include "data/bench.h"

#include <chrono>
#include <cmath>
#include <iomanip>
#include <vector>

#include "data/dataset.h"
#include "data/loader.h"
#include "data/shard_reader.h"

namespace mlkv::data {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

void make_synthetic(int64_t tokens, ShardWriterOptions writer_options, uint64_t seed,
                    std::ostream& out) {
  ShardWriter writer(writer_options);
  std::vector<uint32_t> block;
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  const double vocab = static_cast<double>(writer_options.vocab_size);
  const uint32_t eod = static_cast<uint32_t>(std::max<int64_t>(writer_options.eod_id, 0));
  auto start = std::chrono::steady_clock::now();
  for (int64_t done = 0; done < tokens;) {
    const int64_t n = std::min<int64_t>(int64_t{1} << 20, tokens - done);
    block.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      state ^= state << 13, state ^= state >> 7, state ^= state << 17;  // xorshift64
      double u = static_cast<double>(state >> 11) * 0x1.0p-53;
      // Skewed to low ids like text; id 0 is left to the EOD below.
      uint32_t id = 1 + static_cast<uint32_t>((vocab - 1) * u * u * u * u);
      if ((state & 1023) == 0) id = eod;
      block[static_cast<size_t>(i)] = id;
    }
    // Documents end at EOD tokens.
    size_t from = 0;
    for (size_t i = 0; i < block.size(); ++i) {
      if (block[i] == eod) {
        writer.append(std::span<const uint32_t>(block.data() + from, i + 1 - from));
        writer.end_document();
        from = i + 1;
      }
    }
    writer.append(std::span<const uint32_t>(block.data() + from, block.size() - from));
    done += n;
  }
  auto shards = writer.finish();
  out << "wrote " << tokens << " tokens in " << shards.size() << " shards to "
      << writer_options.out_dir << " (" << std::fixed << std::setprecision(1)
      << seconds_since(start) << " s)\n";
}

void bench_reader(const BenchOptions& options, std::ostream& out) {
  DatasetSummary summary = open_dataset(options.path);
  out << "dataset: " << options.path << ": " << summary.shards.size() << " shards, "
      << summary.total_tokens << " tokens, " << token_type_name(summary.shards[0].dtype)
      << ", gzip " << summary.shards[0].deflate_level << ", chunk "
      << summary.shards[0].chunk_tokens << " tokens\n";
  out << std::fixed << std::setprecision(1);

  // 1. Sequential: 1 Mi-token hyperslabs, shard after shard (what verify/inspect do).
  {
    std::vector<int32_t> tokens;
    int64_t read = 0;
    auto start = std::chrono::steady_clock::now();
    for (const ShardInfo& shard : summary.shards) {
      ShardReader reader(shard.path);
      for (int64_t at = 0; at < shard.num_tokens && seconds_since(start) < options.seconds;) {
        int64_t n = std::min<int64_t>(int64_t{1} << 20, shard.num_tokens - at);
        tokens.resize(static_cast<size_t>(n));
        reader.read(at, n, tokens.data());
        at += n;
        read += n;
      }
    }
    double elapsed = seconds_since(start);
    out << "sequential 1Mi-token reads:        " << std::setw(8)
        << static_cast<double>(read) / elapsed / 1e6 << " M tokens/s  (" << read << " tokens, "
        << elapsed << " s)\n";
  }
  // 2. The trainer's path: shuffled windows through the Loader with its prefetch thread.
  {
    LoaderOptions loader_options;
    loader_options.path = options.path;
    loader_options.seq_len = options.seq_len;
    loader_options.global_batch = options.batch;
    loader_options.prefetch = options.prefetch;
    Loader loader(loader_options);
    std::vector<int32_t> tokens;
    loader.next(tokens);  // first batch: opening files, starting the thread
    int64_t read = 0;
    auto start = std::chrono::steady_clock::now();
    while (seconds_since(start) < options.seconds) {
      loader.next(tokens);
      read += static_cast<int64_t>(tokens.size());
    }
    double elapsed = seconds_since(start);
    out << "Loader, shuffled, seq_len " << options.seq_len << ", batch " << options.batch
        << ": " << std::setw(8) << static_cast<double>(read) / elapsed / 1e6
        << " M tokens/s  (" << read << " tokens, " << elapsed << " s)\n";
  }
}

}  // namespace mlkv::data
