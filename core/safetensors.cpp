// safetensors reader (validating, pread-based) and streaming writer; see safetensors.h.
#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/errors.h"

static_assert(std::endian::native == std::endian::little, "safetensors is little-endian; so is every host we run on");

namespace mlkv::safetensors {

namespace {

struct DTypeRow {
  DType t;
  const char* name;
  int size;
};
constexpr DTypeRow kDTypes[] = {
    {DType::F64, "F64", 8}, {DType::F32, "F32", 4}, {DType::F16, "F16", 2},   {DType::BF16, "BF16", 2},
    {DType::I64, "I64", 8}, {DType::I32, "I32", 4}, {DType::I16, "I16", 2},   {DType::I8, "I8", 1},
    {DType::U8, "U8", 1},   {DType::BOOL, "BOOL", 1}, {DType::U16, "U16", 2}, {DType::U32, "U32", 4},
    {DType::U64, "U64", 8},
};

std::string errno_text() { return std::strerror(errno); }

// Elements per conversion chunk: bounds the reader's scratch memory to a few MB.
constexpr int64_t kChunk = int64_t{1} << 20;

}  // namespace

const char* dtype_name(DType t) {
  for (const auto& r : kDTypes)
    if (r.t == t) return r.name;
  return "?";
}

std::optional<DType> dtype_from_name(const std::string& s) {
  for (const auto& r : kDTypes)
    if (s == r.name) return r.t;
  return std::nullopt;
}

int dtype_size(DType t) {
  for (const auto& r : kDTypes)
    if (r.t == t) return r.size;
  return 0;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;  // validated not to overflow when read
  return n;
}

// ---- fp32 <-> 16-bit floats --------------------------------------------------------------------

uint16_t f32_to_bf16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40);  // quiet NaN
  x += 0x7FFFu + ((x >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(x >> 16);
}

float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

uint16_t f32_to_f16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t exp = (x >> 23) & 0xFFu;
  uint32_t man = x & 0x7FFFFFu;
  if (exp == 0xFF) return static_cast<uint16_t>(sign | 0x7C00u | (man ? 0x200u : 0u));
  const int e = static_cast<int>(exp) - 127 + 15;
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7C00u);  // overflow to infinity
  if (e <= 0) {                                                // f16 subnormal (or zero)
    if (e < -10) return static_cast<uint16_t>(sign);
    man |= 0x800000u;
    const int shift = 14 - e;
    uint32_t h = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = (static_cast<uint32_t>(e) << 10) | (man >> 13);
  const uint32_t rem = man & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry rounds into the exponent, as it should
  return static_cast<uint16_t>(sign | h);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  if (exp == 0) {
    const float v = std::ldexp(static_cast<float>(man), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7F800000u | (man << 13));
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (man << 13));
}

// ---- Reader --------------------------------------------------------------------------------------

namespace {

// Parses and validates the header JSON into tensors and metadata. `where` prefixes every error.
void parse_header(const std::string& text, uint64_t data_bytes, const std::string& where,
                  std::vector<TensorInfo>& tensors, std::map<std::string, std::string>& metadata) {
  using nlohmann::json;
  // Duplicate keys would make a tensor ambiguous; nlohmann keeps the last silently, so count them.
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (depth == 1 && ev == json::parse_event_t::key && !seen.insert(parsed.get<std::string>()).second)
      duplicate = parsed.get<std::string>();
    return true;
  };
  json h;
  try {
    h = json::parse(text, cb);
  } catch (const json::parse_error& e) {
    throw CheckpointError(where + ": header is not valid JSON (at header byte " + std::to_string(e.byte) +
                          ", file offset " + std::to_string(8 + e.byte) + "): " + e.what());
  } catch (const json::exception& e) {  // e.g. out_of_range: a number too large for a double
    throw CheckpointError(where + ": header is not valid JSON: " + e.what());
  }
  if (!duplicate.empty()) throw CheckpointError(where + ": header names '" + duplicate + "' twice");
  if (!h.is_object()) throw CheckpointError(where + ": header is not a JSON object");

  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw CheckpointError(where + ": __metadata__ is not an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          throw CheckpointError(where + ": __metadata__ value of '" + m.key() + "' is not a string");
        metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string t = where + ": tensor '" + name + "'";
    if (name.empty()) throw CheckpointError(where + ": a tensor has an empty name");
    if (!v.is_object()) throw CheckpointError(t + ": entry is not an object");
    for (auto f = v.begin(); f != v.end(); ++f)
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets")
        throw CheckpointError(t + ": unknown field '" + f.key() + "'");
    if (!v.contains("dtype") || !v["dtype"].is_string()) throw CheckpointError(t + ": missing string 'dtype'");
    if (!v.contains("shape") || !v["shape"].is_array()) throw CheckpointError(t + ": missing array 'shape'");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      throw CheckpointError(t + ": 'data_offsets' must be an array [begin, end]");

    TensorInfo info;
    info.name = name;
    const std::string dt = v["dtype"].get<std::string>();
    const auto parsed = dtype_from_name(dt);
    if (!parsed) throw CheckpointError(t + ": unknown dtype '" + dt + "'");
    info.dtype = *parsed;

    uint64_t numel = 1;
    for (const json& s : v["shape"]) {
      if (!s.is_number_unsigned())
        throw CheckpointError(t + ": shape entry " + s.dump() + " is not a non-negative integer");
      const uint64_t dim = s.get<uint64_t>();
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(numel, dim, &numel) || numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        throw CheckpointError(t + ": shape " + v["shape"].dump() + " overflows");
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(info.dtype)), &bytes))
      throw CheckpointError(t + ": shape " + v["shape"].dump() + " overflows");

    const json& off = v["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw CheckpointError(t + ": data_offsets must be non-negative integers");
    info.begin = off[0].get<uint64_t>();
    info.end = off[1].get<uint64_t>();
    if (info.begin > info.end)
      throw CheckpointError(t + ": data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                            "] run backwards");
    if (info.end > data_bytes)
      throw CheckpointError(t + ": data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                            "] overrun the data section of " + std::to_string(data_bytes) +
                            " bytes (file truncated or header corrupt)");
    if (info.end - info.begin != bytes)
      throw CheckpointError(t + ": data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                            "] hold " + std::to_string(info.end - info.begin) + " bytes but " + dt + " " +
                            v["shape"].dump() + " needs " + std::to_string(bytes));
    tensors.push_back(std::move(info));
  }
  std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < tensors.size(); ++i)
    if (tensors[i].begin < tensors[i - 1].end)
      throw CheckpointError(where + ": tensors '" + tensors[i - 1].name + "' and '" + tensors[i].name +
                            "' overlap at data offset " + std::to_string(tensors[i].begin));
}

}  // namespace

Reader::Reader(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw CheckpointError(path + ": cannot open: " + errno_text());
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    fd_ = -1;
    throw CheckpointError(path + ": not a regular file");
  }
  file_size_ = static_cast<uint64_t>(st.st_size);
  try {
    if (file_size_ < 8)
      throw CheckpointError(path + ": " + std::to_string(file_size_) +
                            " bytes is too short for a safetensors file (8-byte header length at offset 0)");
    uint8_t len_bytes[8];
    pread_exact(len_bytes, 8, 0, "header length");
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
    if (n > kMaxHeaderBytes)
      throw CheckpointError(path + ": header length " + std::to_string(n) + " at offset 0 exceeds the " +
                            std::to_string(kMaxHeaderBytes) + "-byte limit (not a safetensors file?)");
    if (n > file_size_ - 8)
      throw CheckpointError(path + ": header length " + std::to_string(n) + " at offset 0 runs past the end of the " +
                            std::to_string(file_size_) + "-byte file (truncated?)");
    std::string text(n, '\0');
    pread_exact(text.data(), n, 8, "header");
    data_offset_ = 8 + n;
    parse_header(text, file_size_ - data_offset_, path, tensors_, metadata_);
    for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

Reader::~Reader() {
  if (fd_ >= 0) ::close(fd_);
}

Reader::Reader(Reader&& o) noexcept
    : path_(std::move(o.path_)), fd_(o.fd_), file_size_(o.file_size_), data_offset_(o.data_offset_),
      tensors_(std::move(o.tensors_)), index_(std::move(o.index_)), metadata_(std::move(o.metadata_)) {
  o.fd_ = -1;
}

Reader& Reader::operator=(Reader&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(o.path_);
    fd_ = o.fd_;
    o.fd_ = -1;
    file_size_ = o.file_size_;
    data_offset_ = o.data_offset_;
    tensors_ = std::move(o.tensors_);
    index_ = std::move(o.index_);
    metadata_ = std::move(o.metadata_);
  }
  return *this;
}

const TensorInfo* Reader::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& Reader::at(const std::string& name) const {
  if (const TensorInfo* t = find(name)) return *t;
  throw CheckpointError(path_ + ": no tensor '" + name + "'");
}

void Reader::pread_exact(void* out, uint64_t bytes, uint64_t file_offset, const std::string& what) const {
  auto* p = static_cast<uint8_t*>(out);
  while (bytes > 0) {
    const ssize_t got = ::pread(fd_, p, std::min<uint64_t>(bytes, 1u << 30), static_cast<off_t>(file_offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0)
      throw CheckpointError(path_ + ": reading " + what + " at offset " + std::to_string(file_offset) + ": " +
                            (got == 0 ? std::string("unexpected end of file (truncated?)") : errno_text()));
    p += got;
    bytes -= static_cast<uint64_t>(got);
    file_offset += static_cast<uint64_t>(got);
  }
}

void Reader::read_f32_range(const std::string& name, int64_t first, int64_t n, float* out) const {
  const TensorInfo& t = at(name);
  if (first < 0 || n < 0 || first > t.numel() || n > t.numel() - first)
    throw CheckpointError(path_ + ": tensor '" + name + "': elements [" + std::to_string(first) + ", " +
                          std::to_string(first + n) + ") outside its " + std::to_string(t.numel()));
  if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16 && t.dtype != DType::F64)
    throw CheckpointError(path_ + ": tensor '" + name + "' has dtype " + dtype_name(t.dtype) +
                          ", expected a float type (F32, F16, BF16, F64)");
  const int es = dtype_size(t.dtype);
  if (t.dtype == DType::F32) {  // straight into the destination
    pread_exact(out, static_cast<uint64_t>(n) * 4, data_offset_ + t.begin + static_cast<uint64_t>(first) * 4,
                "tensor '" + name + "'");
    return;
  }
  std::vector<uint8_t> buf(static_cast<size_t>(std::min(n, kChunk)) * es);
  for (int64_t done = 0; done < n;) {
    const int64_t m = std::min(kChunk, n - done);
    pread_exact(buf.data(), static_cast<uint64_t>(m) * es,
                data_offset_ + t.begin + static_cast<uint64_t>(first + done) * es, "tensor '" + name + "'");
    float* o = out + done;
    for (int64_t i = 0; i < m; ++i) {
      switch (t.dtype) {
        case DType::F16: {
          uint16_t h;
          std::memcpy(&h, buf.data() + 2 * i, 2);
          o[i] = f16_to_f32(h);
          break;
        }
        case DType::BF16: {
          uint16_t h;
          std::memcpy(&h, buf.data() + 2 * i, 2);
          o[i] = bf16_to_f32(h);
          break;
        }
        default: {
          double d;
          std::memcpy(&d, buf.data() + 8 * i, 8);
          o[i] = static_cast<float>(d);
        }
      }
    }
    done += m;
  }
}

void Reader::read_f32(const std::string& name, float* out, int64_t n) const {
  const TensorInfo& t = at(name);
  if (n != t.numel())
    throw CheckpointError(path_ + ": tensor '" + name + "' has " + std::to_string(t.numel()) +
                          " elements, the reader expected " + std::to_string(n));
  read_f32_range(name, 0, n, out);
}

std::vector<float> Reader::read_f32(const std::string& name) const {
  std::vector<float> out(static_cast<size_t>(at(name).numel()));
  read_f32(name, out.data(), static_cast<int64_t>(out.size()));
  return out;
}

std::vector<uint8_t> Reader::read_raw(const std::string& name) const {
  const TensorInfo& t = at(name);
  std::vector<uint8_t> out(t.end - t.begin);
  pread_exact(out.data(), out.size(), data_offset_ + t.begin, "tensor '" + name + "'");
  return out;
}

std::vector<int32_t> Reader::read_i32(const std::string& name) const {
  const TensorInfo& t = at(name);
  const std::vector<uint8_t> raw = read_raw(name);
  const int es = dtype_size(t.dtype);
  std::vector<int32_t> out(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    const uint8_t* p = raw.data() + i * es;
    long double v = 0;  // every integer dtype fits exactly in a long double's 64-bit mantissa
    switch (t.dtype) {
      case DType::I64: { int64_t x; std::memcpy(&x, p, 8); v = x; break; }
      case DType::I32: { int32_t x; std::memcpy(&x, p, 4); v = x; break; }
      case DType::I16: { int16_t x; std::memcpy(&x, p, 2); v = x; break; }
      case DType::I8: { int8_t x; std::memcpy(&x, p, 1); v = x; break; }
      case DType::U8: case DType::BOOL: v = *p; break;
      case DType::U16: { uint16_t x; std::memcpy(&x, p, 2); v = x; break; }
      case DType::U32: { uint32_t x; std::memcpy(&x, p, 4); v = x; break; }
      case DType::U64: { uint64_t x; std::memcpy(&x, p, 8); v = x; break; }
      default:
        throw CheckpointError(path_ + ": tensor '" + name + "' has dtype " + dtype_name(t.dtype) +
                              ", expected an integer type");
    }
    if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
      throw CheckpointError(path_ + ": tensor '" + name + "' element " + std::to_string(i) +
                            " does not fit in int32");
    out[i] = static_cast<int32_t>(v);
  }
  return out;
}

// ---- Writer --------------------------------------------------------------------------------------

void Writer::add_entry(Entry e) {
  if (e.name.empty() || e.name == "__metadata__") throw ConfigError("safetensors writer: bad tensor name '" + e.name + "'");
  for (int64_t s : e.shape)
    if (s < 0) throw ConfigError("safetensors writer: tensor '" + e.name + "' has a negative dimension");
  for (const Entry& x : entries_)
    if (x.name == e.name) throw ConfigError("safetensors writer: tensor '" + e.name + "' added twice");
  entries_.push_back(std::move(e));
}

void Writer::add_f32(const std::string& name, const float* data, std::vector<int64_t> shape) {
  add_entry({name, DType::F32, std::move(shape), data, DType::F32, {}});
}
void Writer::add_bf16_from_f32(const std::string& name, const float* data, std::vector<int64_t> shape) {
  add_entry({name, DType::BF16, std::move(shape), data, DType::F32, {}});
}
void Writer::add_f16_from_f32(const std::string& name, const float* data, std::vector<int64_t> shape) {
  add_entry({name, DType::F16, std::move(shape), data, DType::F32, {}});
}
void Writer::add_i32(const std::string& name, const int32_t* data, std::vector<int64_t> shape) {
  add_entry({name, DType::I32, std::move(shape), data, DType::I32, {}});
}
void Writer::add_lazy(const std::string& name, DType stored, std::vector<int64_t> shape, Fill fill) {
  if (stored != DType::F32 && stored != DType::F16 && stored != DType::BF16)
    throw ConfigError("safetensors writer: tensor '" + name + "': lazy tensors are stored as F32, F16 or BF16");
  add_entry({name, stored, std::move(shape), nullptr, DType::F32, std::move(fill)});
}
void Writer::set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

static int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

uint64_t Writer::data_bytes() const {
  uint64_t b = 0;
  for (const Entry& e : entries_) b += static_cast<uint64_t>(numel_of(e.shape)) * dtype_size(e.stored);
  return b;
}

namespace {

// A file written through one buffer; every failure names the file.
class OutFile {
 public:
  explicit OutFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw IoError(path + ": cannot create: " + errno_text());
  }
  ~OutFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  void write(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, std::min<size_t>(n, 1u << 30));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) throw IoError(path_ + ": write failed: " + errno_text());
      p += w;
      n -= static_cast<size_t>(w);
    }
  }
  void finish() {
    if (::fsync(fd_) != 0) throw IoError(path_ + ": fsync failed: " + errno_text());
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw IoError(path_ + ": close failed: " + errno_text());
  }

 private:
  std::string path_;
  int fd_ = -1;
};

// Converts n fp32 values to `stored` and writes them, a chunk at a time.
void write_floats(OutFile& f, const float* data, int64_t n, DType stored) {
  if (stored == DType::F32) {
    f.write(data, static_cast<size_t>(n) * 4);
    return;
  }
  std::vector<uint16_t> buf(static_cast<size_t>(std::min(n, kChunk)));
  for (int64_t done = 0; done < n;) {
    const int64_t m = std::min(kChunk, n - done);
    for (int64_t i = 0; i < m; ++i)
      buf[i] = stored == DType::BF16 ? f32_to_bf16(data[done + i]) : f32_to_f16(data[done + i]);
    f.write(buf.data(), static_cast<size_t>(m) * 2);
    done += m;
  }
}

}  // namespace

void Writer::write(const std::string& path) const {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata_) m[k] = v;
    h["__metadata__"] = m;
  }
  uint64_t off = 0;
  for (const Entry& e : entries_) {
    const uint64_t bytes = static_cast<uint64_t>(numel_of(e.shape)) * dtype_size(e.stored);
    h[e.name] = {{"dtype", dtype_name(e.stored)}, {"shape", e.shape}, {"data_offsets", {off, off + bytes}}};
    off += bytes;
  }
  std::string text = h.dump();
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  text.append((8 - text.size() % 8) % 8, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));

  const std::string tmp = path + ".tmp";
  {
    OutFile f(tmp);
    f.write(len, 8);
    f.write(text.data(), text.size());
    for (const Entry& e : entries_) {
      const int64_t n = numel_of(e.shape);
      if (e.fill) {
        std::vector<float> buf(static_cast<size_t>(n));  // one lazy tensor in memory at a time
        e.fill(buf.data());
        write_floats(f, buf.data(), n, e.stored);
      } else if (e.source == DType::I32) {
        f.write(e.data, static_cast<size_t>(n) * 4);
      } else {
        write_floats(f, static_cast<const float*>(e.data), n, e.stored);
      }
    }
    f.finish();
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) throw IoError(path + ": rename from " + tmp + " failed: " + errno_text());
}

}  // namespace mlkv::safetensors
