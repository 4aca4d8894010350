// ShardWriter: takes tokens as a stream (with optional document boundaries) and writes
// OUT/<prefix>-00000.h5, -00001.h5, ... rolling over every `shard_tokens` tokens.
//
// Files are written as *.h5.partial and renamed when complete, so an interrupted import never
// leaves a file that looks finished. A last shard shorter than half of `shard_tokens` is folded
// into the one before it, so no shard ends up too short to hold a training window.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "data/shard_format.h"

namespace mlkv::data {

struct ShardWriterOptions {
  std::string out_dir;
  std::string prefix = "shard";
  int64_t shard_tokens = kDefaultShardTokens;
  int64_t vocab_size = 0;      // required: every token must be < vocab_size
  int64_t eod_id = -1;
  std::string tokenizer;
  std::string source;          // provenance, stored as an attribute
  int compress_level = 0;      // gzip level 0 (off) ... 9
  int64_t chunk_tokens = 0;    // 0: kDefaultChunkTokens, or the compressed default
  bool doc_offsets = true;     // write /doc_offsets
  int64_t sequence_length = 0; // fixed-length sequences (Pythia pre-shuffled: 2049)
};

class ShardWriter {
 public:
  explicit ShardWriter(ShardWriterOptions options);
  ~ShardWriter();  // an unfinished writer leaves only *.partial files behind
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Appends tokens to the current document. Throws DataError for a token ≥ vocab_size.
  void append(std::span<const uint32_t> tokens);
  void append(std::span<const int32_t> tokens);
  // The next appended token starts a new document.
  void end_document();
  // Flushes, folds a short tail and renames every shard into place. Returns the shard paths.
  std::vector<std::string> finish();

  int64_t tokens_written() const { return total_tokens_; }

 private:
  struct OpenShard;
  void append_checked(const uint32_t* tokens, int64_t count);
  void open_next_shard();
  void close_shard(OpenShard& shard);

  ShardWriterOptions options_;
  std::unique_ptr<OpenShard> previous_;  // complete but kept open until the next one is half full
  std::unique_ptr<OpenShard> current_;
  std::vector<std::string> finished_paths_;
  int shard_index_ = 0;
  int64_t total_tokens_ = 0;
  bool document_starts_next_ = true;
  bool finished_ = false;
  std::vector<uint32_t> widen_buffer_;
};

}  // namespace mlkv::data
