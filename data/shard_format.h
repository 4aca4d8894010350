// The on-disk shard format (version 1), in one place: names, attributes and defaults.
// data/README.md documents the same facts for users; keep the two in step.
#pragma once
#include <cstdint>
#include <string>

namespace mlkv::data {

inline constexpr int64_t kFormatVersion = 1;

// Datasets.
inline constexpr const char* kTokensDataset = "tokens";            // 1-D uint16 | uint32
inline constexpr const char* kDocOffsetsDataset = "doc_offsets";   // 1-D uint64, optional
// CRC-32 of each block of `crc_block_tokens` tokens, over the tokens as stored (little-endian
// uint16/uint32 elements, i.e. after any decompression); the last block may be shorter. Optional:
// shards written before it are read without it (README: "Chunk checksums").
inline constexpr const char* kChunkCrcDataset = "chunk_crc32";     // 1-D uint32

// Root-group attributes.
inline constexpr const char* kAttrFormatVersion = "format_version";  // int64, required
inline constexpr const char* kAttrVocabSize = "vocab_size";          // int64, required
inline constexpr const char* kAttrEodId = "eod_id";                  // int64, -1 = none
inline constexpr const char* kAttrTokenizer = "tokenizer";           // string
inline constexpr const char* kAttrNumTokens = "num_tokens";          // int64 (= /tokens length)
inline constexpr const char* kAttrMaxTokenId = "max_token_id";       // int64, -1 when empty
inline constexpr const char* kAttrSequenceLength = "sequence_length";  // int64, 0 = free text
inline constexpr const char* kAttrFirstDocContinues = "first_doc_continues";  // int64 0/1
inline constexpr const char* kAttrSource = "source";                 // string, provenance
inline constexpr const char* kAttrCrcBlockTokens = "crc_block_tokens";  // int64, with chunk_crc32

// Chunking: 1 Mi tokens (2 MiB as uint16) keeps the chunk index tiny and lets uncompressed
// reads of one window skip HDF5's chunk cache. Compressed chunks are smaller because a random
// window read must inflate its whole chunk.
inline constexpr int64_t kDefaultChunkTokens = int64_t{1} << 20;
inline constexpr int64_t kDefaultCompressedChunkTokens = int64_t{1} << 13;
inline constexpr int64_t kDefaultShardTokens = int64_t{1} << 27;

// uint16 holds every id when vocab_size ≤ 65535 (ids are < vocab_size).
inline constexpr int64_t kMaxUint16Vocab = 65535;

enum class TokenType { kUint16, kUint32 };
inline const char* token_type_name(TokenType type) {
  return type == TokenType::kUint16 ? "uint16" : "uint32";
}
inline TokenType token_type_for_vocab(int64_t vocab_size) {
  return vocab_size <= kMaxUint16Vocab ? TokenType::kUint16 : TokenType::kUint32;
}

// Everything a shard's header says, read without touching its tokens.
struct ShardInfo {
  std::string path;
  int64_t num_tokens = 0;
  TokenType dtype = TokenType::kUint16;
  int64_t format_version = 0;
  int64_t vocab_size = 0;
  int64_t eod_id = -1;
  std::string tokenizer;
  std::string source;
  int64_t max_token_id = -1;      // -1: absent or empty shard
  bool has_max_token_id = false;  // shards from other writers may lack it
  int64_t sequence_length = 0;
  int64_t num_doc_pieces = -1;    // -1: no /doc_offsets
  bool first_doc_continues = false;
  int64_t chunk_tokens = 0;
  int deflate_level = 0;          // 0: uncompressed
  int64_t crc_block_tokens = 0;   // 0: no /chunk_crc32 (a shard from before checksums)
  int64_t num_crc_blocks() const {
    return crc_block_tokens > 0 ? (num_tokens + crc_block_tokens - 1) / crc_block_tokens : 0;
  }
};

}  // namespace mlkv::data
