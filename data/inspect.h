// Human-readable reports on a dataset: `inspect` (layout, attributes, a token histogram,
// the first tokens) and `verify` (every chunk read, every id checked, offsets consistent).
#pragma once
#include <cstdint>
#include <ostream>
#include <string>

namespace mlkv::data {

class BpeTokenizer;

struct InspectOptions {
  int64_t histogram_tokens = int64_t{1} << 26;  // tokens scanned for the histogram
  int first_tokens = 32;
  const BpeTokenizer* tokenizer = nullptr;      // decodes the first and most frequent tokens
};

void inspect_dataset(const std::string& path, const InspectOptions& options, std::ostream& out);

struct VerifyResult {
  int64_t shards = 0;
  int64_t tokens = 0;
  int64_t errors = 0;
};

// Reads every chunk of every shard and checks ids < vocab (vocab_size 0: each shard's
// attribute), the max_token_id and num_tokens attributes and /doc_offsets. Prints one line per
// problem, naming file and token offset. Never throws for bad data: counts it.
VerifyResult verify_dataset(const std::string& path, int64_t vocab_size, std::ostream& out);

}  // namespace mlkv::data
