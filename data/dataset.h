// A dataset is a directory of shards, one .h5 shard, or a glob of shards. This file resolves
// such a path to shard files and checks a dataset before training (headers, token range,
// lengths), so that bad data stops the run at start-up with the file and offset named.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/shard_format.h"

namespace mlkv::data {

// Shard files named by `path`, sorted by name: a directory's *.h5 files (not recursive, and
// never *.partial), a single file, or a glob pattern. Throws DataError when the path does not
// exist or names no shard.
std::vector<std::string> list_shards(const std::string& path);

struct DatasetSummary {
  std::vector<ShardInfo> shards;
  int64_t total_tokens = 0;
  int64_t vocab_size = 0;       // largest vocab_size attribute
  int64_t eod_id = -1;          // first shard's
  int64_t sequence_length = 0;  // common sequence_length attribute, 0 when they differ
};

// Reads every shard header (not the tokens). Throws DataError.
DatasetSummary open_dataset(const std::string& path);

// Checks a dataset before training: every shard readable and in the format, holding at least
// seq_len + 1 tokens, and every token id < vocab_size (from the max_token_id attribute; shards
// without it are scanned). vocab_size 0 checks against each shard's own vocab_size attribute.
// Throws DataError naming the file and, for bad tokens, the token offset.
DatasetSummary validate_dataset(const std::string& path, int64_t vocab_size, int64_t seq_len);

// Scans a shard's tokens in chunk-sized blocks and returns the offset of the first id ≥ limit,
// or -1. Sets `max_id` to the largest id seen. Throws DataError for unreadable chunks.
int64_t find_token_at_or_above(const std::string& shard_path, int64_t limit, int64_t& max_id);

}  // namespace mlkv::data
