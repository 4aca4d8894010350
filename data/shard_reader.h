// ShardReader: opens one shard, checks its header against the format, and reads token ranges
// through HDF5 hyperslabs (never the whole shard). Every failure is a DataError that names the
// file and the token offset.
//
// Chunk checksums: when the shard has /chunk_crc32, the first read that touches a block of
// crc_block_tokens tokens reads that whole block once and checks its CRC-32, so bytes changed
// after writing (a flipped bit on disk, an overwritten range, a gzip chunk that still inflates)
// are a DataError naming the block, never tokens silently trained on. Shards without it are read
// as before (ids are still range-checked by the Loader).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/h5.h"
#include "data/shard_format.h"

namespace mlkv::data {

class ShardReader {
 public:
  // Opens `path` and validates its header (not its tokens). Throws DataError. `verified_blocks`
  // (one flag per checksum block) lets a caller keep which blocks were checked across readers of
  // the same shard (the Loader reopens shards); nullptr keeps them in this reader.
  explicit ShardReader(const std::string& path, std::vector<uint8_t>* verified_blocks = nullptr);

  const ShardInfo& info() const { return info_; }
  const std::string& path() const { return info_.path; }

  // Reads tokens [start, start + count) widened to int32. Throws DataError naming the offset.
  void read(int64_t start, int64_t count, int32_t* out);
  // Same, in the shard's own element width (no conversion): uint16 or uint32 elements.
  void read_raw(int64_t start, int64_t count, void* out);
  // The /doc_offsets dataset (empty when absent).
  std::vector<uint64_t> doc_offsets();
  // Checks the CRC-32 of checksum block `block` now, unless already done (no-op without
  // checksums). Throws DataError naming the block and its token range.
  void verify_block(int64_t block);

 private:
  void read_hyperslab(int64_t start, int64_t count, void* out);

  ShardInfo info_;
  std::vector<uint32_t> crcs_;
  std::vector<uint8_t> own_verified_;
  std::vector<uint8_t>* verified_ = nullptr;
  std::vector<uint8_t> block_buffer_;
  h5::Handle file_;
  h5::Handle tokens_;
  h5::Handle file_space_;
  std::vector<uint16_t> narrow_;
};

// Reads only the header of a shard (opens and closes it).
ShardInfo read_shard_info(const std::string& path);

}  // namespace mlkv::data
