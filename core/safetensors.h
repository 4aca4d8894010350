// safetensors: a bounds-checked reader and a streaming writer for the safetensors format
// (8-byte little-endian header length N, N bytes of JSON header, then the data section).
//
// The reader reads files from the internet, so every length, shape and offset is checked before it
// is used, and it reads tensor by tensor with pread: a 12B checkpoint is never loaded at once.
// The writer emits the header first and then streams each tensor, converting to the stored dtype on
// the way; a tensor's data may come from a callback called during write(), so a converter holds only
// one tensor at a time in memory.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace mlkv::safetensors {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, U16, U32, U64 };

const char* dtype_name(DType t);                         // "F32", "BF16", …
std::optional<DType> dtype_from_name(const std::string& s);
int dtype_size(DType t);                                 // bytes per element

// Largest header we accept (the Rust reference implementation uses the same limit).
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the start of the data section
  int64_t numel() const;
};

class Reader {
 public:
  // Opens and validates the file; throws CheckpointError naming the file (and offset/tensor).
  explicit Reader(const std::string& path);
  ~Reader();
  Reader(Reader&&) noexcept;
  Reader& operator=(Reader&&) noexcept;
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file-offset order
  const TensorInfo* find(const std::string& name) const;
  const TensorInfo& at(const std::string& name) const;  // CheckpointError "no tensor 'x' in FILE"
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }
  uint64_t data_offset() const { return data_offset_; }  // 8 + header length

  // Converts F32/F16/BF16/F64 to fp32; n must equal numel. Streams in chunks (no second full copy).
  void read_f32(const std::string& name, float* out, int64_t n) const;
  std::vector<float> read_f32(const std::string& name) const;
  // Elements [first, first + n) of the flattened tensor as fp32 (row slices of big tensors).
  void read_f32_range(const std::string& name, int64_t first, int64_t n, float* out) const;
  // I32/I64/I16/I8/U8/U16/U32/U64 to int32, range-checked (CheckpointError on overflow).
  std::vector<int32_t> read_i32(const std::string& name) const;
  // The stored bytes of a tensor, unconverted (end − begin bytes).
  std::vector<uint8_t> read_raw(const std::string& name) const;

 private:
  void pread_exact(void* out, uint64_t bytes, uint64_t file_offset, const std::string& what) const;
  std::string path_;
  int fd_ = -1;
  uint64_t file_size_ = 0, data_offset_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

class Writer {
 public:
  // Fills `numel` fp32 values of one tensor; called once, during write(), in registration order.
  using Fill = std::function<void(float* out)>;

  // `data` must outlive write(). Shapes are row-major; a scalar has shape {}.
  void add_f32(const std::string& name, const float* data, std::vector<int64_t> shape);
  void add_bf16_from_f32(const std::string& name, const float* data, std::vector<int64_t> shape);
  void add_f16_from_f32(const std::string& name, const float* data, std::vector<int64_t> shape);
  void add_i32(const std::string& name, const int32_t* data, std::vector<int64_t> shape);
  // Streaming: the tensor is produced by `fill` during write() and stored as `stored`
  // (F32, F16 or BF16; round-to-nearest-even). Only one such tensor is in memory at a time.
  void add_lazy(const std::string& name, DType stored, std::vector<int64_t> shape, Fill fill);
  void set_metadata(const std::string& key, const std::string& value);

  size_t size() const { return entries_.size(); }
  uint64_t data_bytes() const;  // size of the data section so far
  // Writes to `path` (via path.tmp, fsync'd, renamed into place). Throws IoError; ConfigError
  // for duplicate names (reported at add time too).
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType stored = DType::F32;
    std::vector<int64_t> shape;
    const void* data = nullptr;  // raw source (F32 floats or I32 ints), or null for lazy
    DType source = DType::F32;   // what `data` holds
    Fill fill;
  };
  void add_entry(Entry e);
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// fp32 ↔ bf16/f16 conversions used by the reader and writer (round-to-nearest-even; NaN kept NaN).
uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);

}  // namespace mlkv::safetensors
