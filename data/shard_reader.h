// ShardReader: opens one shard, checks its header against the format, and reads token ranges
// through HDF5 hyperslabs (never the whole shard). Every failure is a DataError that names the
// file and the token offset.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/h5.h"
#include "data/shard_format.h"

namespace mlkv::data {

class ShardReader {
 public:
  // Opens `path` and validates its header (not its tokens). Throws DataError.
  explicit ShardReader(const std::string& path);

  const ShardInfo& info() const { return info_; }
  const std::string& path() const { return info_.path; }

  // Reads tokens [start, start + count) widened to int32. Throws DataError naming the offset.
  void read(int64_t start, int64_t count, int32_t* out);
  // Same, in the shard's own element width (no conversion): uint16 or uint32 elements.
  void read_raw(int64_t start, int64_t count, void* out);
  // The /doc_offsets dataset (empty when absent).
  std::vector<uint64_t> doc_offsets();

 private:
  ShardInfo info_;
  h5::Handle file_;
  h5::Handle tokens_;
  h5::Handle file_space_;
  std::vector<uint16_t> narrow_;
};

// Reads only the header of a shard (opens and closes it).
ShardInfo read_shard_info(const std::string& path);

}  // namespace mlkv::data
