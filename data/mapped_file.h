// Read-only memory map of a whole file (the OS pages it in on demand and can drop it again,
// so mapping a multi-GB .bin costs no resident memory of its own).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace mlkv::data {

class MappedFile {
 public:
  // Throws DataError when the file is missing, IoError when it cannot be mapped.
  explicit MappedFile(const std::string& path, const std::string& missing_hint = "");
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Little-endian load of a T at a byte offset (unaligned-safe). Caller checks bounds.
  template <typename T>
  T load(size_t offset) const {
    T value;
    std::memcpy(&value, data_ + offset, sizeof(T));
    return value;
  }
  // Tells the kernel the pages of [begin, end) are no longer needed.
  void release(size_t begin, size_t end) const;

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace mlkv::data
