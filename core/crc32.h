// CRC-32 (IEEE 802.3, the zlib/PNG polynomial): the checksum of checkpoint files, of state.json
// itself, and of every chunk of a token shard (data/README.md).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace mlkv {

// CRC-32 of `bytes` bytes, continuing from `crc` (0 to start).
uint32_t crc32_update(uint32_t crc, const void* data, size_t bytes);
uint32_t crc32_file(const std::string& path);  // throws IoError

}  // namespace mlkv
