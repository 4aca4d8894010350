// TensorBoard event files: tfrecord framing and a hand-written protobuf subset (see tensorboard.h).
#include "core/tensorboard.h"

#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/errors.h"

namespace mlkv::tensorboard {
namespace {

// ---- protobuf wire format: key = field << 3 | wire type (0 varint, 1 fixed64, 2 bytes, 5 fixed32)

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_fixed(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}
void put_key(std::string& out, int field, int wire) { put_varint(out, static_cast<uint64_t>(field) << 3 | wire); }
void put_bytes(std::string& out, int field, const std::string& bytes) {
  put_key(out, field, 2);
  put_varint(out, bytes.size());
  out += bytes;
}
void put_double(std::string& out, int field, double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, 8);
  put_key(out, field, 1);
  put_fixed(out, bits, 8);
}
void put_float(std::string& out, int field, float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  put_key(out, field, 5);
  put_fixed(out, bits, 4);
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string event_header(double wall_time, int64_t step) {
  std::string e;
  put_double(e, 1, wall_time);
  put_key(e, 2, 0);
  put_varint(e, static_cast<uint64_t>(step));  // int64: negative values take ten bytes, as in protobuf
  return e;
}

// ---- decoding

struct Cursor {
  const uint8_t* p;
  const uint8_t* end;
  std::string where;

  [[noreturn]] void fail(const std::string& why) const { throw Error(where + ": malformed event: " + why); }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) fail("truncated varint");
      const uint8_t b = *p++;
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    fail("varint longer than 10 bytes");
  }
  uint64_t fixed(int bytes) {
    if (end - p < bytes) fail("truncated fixed field");
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
    p += bytes;
    return v;
  }
  Cursor sub() {
    const uint64_t n = varint();
    if (static_cast<uint64_t>(end - p) < n) fail("length-delimited field runs past its message");
    Cursor c{p, p + n, where};
    p += n;
    return c;
  }
  void skip(int wire) {
    if (wire == 0) varint();
    else if (wire == 1) fixed(8);
    else if (wire == 2) sub();
    else if (wire == 5) fixed(4);
    else fail("unsupported wire type " + std::to_string(wire));
  }
};

std::pair<std::string, float> decode_value(Cursor c) {
  std::pair<std::string, float> v{"", 0.0f};
  while (c.p < c.end) {
    const uint64_t key = c.varint();
    const int field = static_cast<int>(key >> 3), wire = static_cast<int>(key & 7);
    if (field == 1 && wire == 2) {
      Cursor s = c.sub();
      v.first.assign(reinterpret_cast<const char*>(s.p), s.end - s.p);
    } else if (field == 2 && wire == 5) {
      const uint32_t bits = static_cast<uint32_t>(c.fixed(4));
      std::memcpy(&v.second, &bits, 4);
    } else {
      c.skip(wire);
    }
  }
  return v;
}

Event decode_event(Cursor c) {
  Event e;
  while (c.p < c.end) {
    const uint64_t key = c.varint();
    const int field = static_cast<int>(key >> 3), wire = static_cast<int>(key & 7);
    if (field == 1 && wire == 1) {
      const uint64_t bits = c.fixed(8);
      std::memcpy(&e.wall_time, &bits, 8);
    } else if (field == 2 && wire == 0) {
      e.step = static_cast<int64_t>(c.varint());
    } else if (field == 3 && wire == 2) {
      Cursor s = c.sub();
      e.file_version.assign(reinterpret_cast<const char*>(s.p), s.end - s.p);
    } else if (field == 5 && wire == 2) {
      Cursor summary = c.sub();
      while (summary.p < summary.end) {
        const uint64_t k = summary.varint();
        if ((k >> 3) == 1 && (k & 7) == 2) e.scalars.push_back(decode_value(summary.sub()));
        else summary.skip(static_cast<int>(k & 7));
      }
    } else if (field == 7 && wire == 2) {
      Cursor log = c.sub();
      while (log.p < log.end) {
        const uint64_t k = log.varint();
        if ((k >> 3) == 1 && (k & 7) == 0) e.session_start = log.varint() == 1;
        else log.skip(static_cast<int>(k & 7));
      }
    } else {
      c.skip(wire);
    }
  }
  return e;
}

}  // namespace

uint32_t crc32c(const void* data, size_t bytes) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0x82F63B78u ^ (c >> 1) : c >> 1;  // reflected Castagnoli
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xFFFFFFFFu;
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < bytes; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(const void* data, size_t bytes) {
  const uint32_t crc = crc32c(data, bytes);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

EventWriter::EventWriter(const std::string& dir) {
  char host[256] = "localhost";
  ::gethostname(host, sizeof host - 1);
  path_ = dir + "/events.out.tfevents." + std::to_string(static_cast<int64_t>(now_seconds())) + "." + host + "." +
          std::to_string(::getpid());
  file_ = std::fopen(path_.c_str(), "wb");
  if (!file_) throw IoError(path_ + ": cannot create: " + std::strerror(errno));
  std::string e = event_header(now_seconds(), 0);
  put_bytes(e, 3, "brain.Event:2");
  write_record(e);
  flush();
}

EventWriter::~EventWriter() {
  if (file_) std::fclose(file_);
}

std::string encode_scalar_event(double wall_time, int64_t step, const std::string& tag, float value) {
  std::string v;
  put_bytes(v, 1, tag);
  put_float(v, 2, value);
  std::string summary;
  put_bytes(summary, 1, v);
  std::string e = event_header(wall_time, step);
  put_bytes(e, 5, summary);
  return e;
}

void EventWriter::add_scalar(const std::string& tag, double value, int64_t step) {
  write_record(encode_scalar_event(now_seconds(), step, tag, static_cast<float>(value)));
}

void EventWriter::add_session_start(int64_t step) {
  std::string log;
  put_key(log, 1, 0);
  put_varint(log, 1);  // SessionLog.START
  std::string e = event_header(now_seconds(), step);
  put_bytes(e, 7, log);  // Event.session_log is field 7 (6 is the deprecated log_message)
  write_record(e);
}

void EventWriter::flush() {
  if (std::fflush(file_) != 0) throw IoError(path_ + ": write failed: " + std::strerror(errno));
}

void EventWriter::write_record(const std::string& data) {
  std::string rec;
  put_fixed(rec, data.size(), 8);
  const uint32_t len_crc = masked_crc32c(rec.data(), 8);
  put_fixed(rec, len_crc, 4);
  rec += data;
  put_fixed(rec, masked_crc32c(data.data(), data.size()), 4);
  if (std::fwrite(rec.data(), 1, rec.size(), file_) != rec.size())
    throw IoError(path_ + ": write failed: " + std::strerror(errno));
}

std::vector<Event> read_events(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open: " + std::strerror(errno));
  std::ostringstream s;
  s << in.rdbuf();
  const std::string bytes = s.str();
  const auto* base = reinterpret_cast<const uint8_t*>(bytes.data());
  std::vector<Event> events;
  size_t off = 0;
  auto u32 = [&](size_t at) {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(base[at + i]) << (8 * i);
    return v;
  };
  while (off < bytes.size()) {
    const std::string where = path + ": record " + std::to_string(events.size()) + " at byte " + std::to_string(off);
    if (bytes.size() - off < 12) throw Error(where + ": truncated header");
    uint64_t len = 0;
    for (int i = 0; i < 8; ++i) len |= static_cast<uint64_t>(base[off + i]) << (8 * i);
    if (u32(off + 8) != masked_crc32c(base + off, 8)) throw Error(where + ": length CRC mismatch");
    if (bytes.size() - off - 12 < len + 4) throw Error(where + ": truncated data");
    const uint8_t* data = base + off + 12;
    if (u32(off + 12 + len) != masked_crc32c(data, len)) throw Error(where + ": data CRC mismatch");
    events.push_back(decode_event(Cursor{data, data + len, where}));
    off += 12 + len + 4;
  }
  return events;
}

}  // namespace mlkv::tensorboard
