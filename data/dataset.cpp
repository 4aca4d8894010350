// Dataset path resolution and pre-training validation.
#include "data/dataset.h"

#include <glob.h>

#include <algorithm>
#include <filesystem>

#include "core/errors.h"
#include "data/shard_reader.h"

namespace mlkv::data {

namespace fs = std::filesystem;

std::vector<std::string> list_shards(const std::string& path) {
  std::vector<std::string> shards;
  std::error_code ec;
  if (path.find_first_of("*?[") != std::string::npos) {
    glob_t matches{};
    if (glob(path.c_str(), 0, nullptr, &matches) == 0) {
      for (size_t i = 0; i < matches.gl_pathc; ++i) {
        if (fs::is_regular_file(matches.gl_pathv[i], ec)) shards.emplace_back(matches.gl_pathv[i]);
      }
    }
    globfree(&matches);
    if (shards.empty()) throw DataError(path + ": the glob matches no shard file");
  } else if (fs::is_directory(path, ec)) {
    for (const auto& entry : fs::directory_iterator(path, ec)) {
      if (entry.is_regular_file() && entry.path().extension() == ".h5") {
        shards.push_back(entry.path().string());
      }
    }
    if (shards.empty()) {
      throw DataError(path + ": directory holds no shard (*.h5) file; build one with mlkv-data "
                      "tokenize / import-megatron / import-raw");
    }
  } else if (fs::exists(path, ec)) {
    shards.push_back(path);
  } else {
    throw DataError(path + ": dataset does not exist (expected a directory of .h5 shards, a "
                    ".h5 file or a glob)");
  }
  std::sort(shards.begin(), shards.end());
  return shards;
}

DatasetSummary open_dataset(const std::string& path) {
  DatasetSummary summary;
  for (const std::string& file : list_shards(path)) {
    summary.shards.push_back(read_shard_info(file));
  }
  const ShardInfo& first = summary.shards.front();
  summary.eod_id = first.eod_id;
  summary.sequence_length = first.sequence_length;
  for (const ShardInfo& shard : summary.shards) {
    summary.total_tokens += shard.num_tokens;
    summary.vocab_size = std::max(summary.vocab_size, shard.vocab_size);
    if (shard.sequence_length != summary.sequence_length) summary.sequence_length = 0;
  }
  return summary;
}

int64_t find_token_at_or_above(const std::string& shard_path, int64_t limit, int64_t& max_id) {
  ShardReader reader(shard_path);
  const ShardInfo& info = reader.info();
  const int64_t block = std::max<int64_t>(info.chunk_tokens, int64_t{1} << 20);
  std::vector<int32_t> tokens;
  max_id = -1;
  int64_t first_bad = -1;
  for (int64_t start = 0; start < info.num_tokens; start += block) {
    int64_t n = std::min(block, info.num_tokens - start);
    tokens.resize(static_cast<size_t>(n));
    reader.read(start, n, tokens.data());
    for (int64_t i = 0; i < n; ++i) {
      // uint32 ids ≥ 2^31 come back negative through int32: treat them as huge.
      int64_t id = static_cast<uint32_t>(tokens[static_cast<size_t>(i)]);
      max_id = std::max(max_id, id);
      if (first_bad < 0 && id >= limit) first_bad = start + i;
    }
    if (first_bad >= 0) break;
  }
  return first_bad;
}

DatasetSummary validate_dataset(const std::string& path, int64_t vocab_size, int64_t seq_len) {
  DatasetSummary summary = open_dataset(path);
  for (const ShardInfo& shard : summary.shards) {
    if (seq_len > 0 && shard.num_tokens < seq_len + 1) {
      throw DataError(shard.path + ": shard holds " + std::to_string(shard.num_tokens) +
                      " tokens, fewer than seq_len + 1 = " + std::to_string(seq_len + 1) +
                      "; it cannot give one sample (samples do not cross shards): merge it "
                      "into another shard or lower seq_len");
    }
    // The model's vocab, and never more than the shard's own: an id >= its vocab_size attribute
    // is damage (or a mislabelled shard), whatever the model could embed.
    int64_t limit = vocab_size > 0 ? std::min(vocab_size, shard.vocab_size) : shard.vocab_size;
    if (shard.has_max_token_id && shard.max_token_id < limit) continue;
    int64_t max_id = -1;
    int64_t bad = find_token_at_or_above(shard.path, limit, max_id);
    if (bad >= 0) {
      std::vector<int32_t> token(1);
      ShardReader(shard.path).read(bad, 1, token.data());
      throw DataError(shard.path + ": token id " + std::to_string(uint32_t(token[0])) +
                      " at token offset " + std::to_string(bad) + " is >= vocab_size " +
                      std::to_string(limit));
    }
  }
  return summary;
}

}  // namespace mlkv::data
