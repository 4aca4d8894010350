// TensorBoard event files, written natively (no protobuf library): a tfrecord stream of Event
// protobufs encoded by hand.
//
//   record  = uint64 length | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
//   masked  = ((crc >> 15) | (crc << 17)) + 0xa282ead8          (all little-endian)
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
//             SessionLog session_log = 7; }     (6 is LogMessage log_message, which TensorBoard ignores)
//   Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
//   SessionLog { SessionStatus status = 1; }  START = 1 (TensorBoard's EventAccumulator then drops
//                                           every event read so far whose step >= this one: on resume)
// The reader decodes exactly this subset, verifying both CRCs of every record; the test uses it.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace mlkv::tensorboard {

// CRC-32C (Castagnoli), as tfrecord uses it, and its masked form.
uint32_t crc32c(const void* data, size_t bytes);
uint32_t masked_crc32c(const void* data, size_t bytes);

// The serialized Event of one scalar summary (what add_scalar frames; exposed for a golden test).
std::string encode_scalar_event(double wall_time, int64_t step, const std::string& tag, float value);

class EventWriter {
 public:
  // Creates DIR/events.out.tfevents.<unix time>.<host>.<pid> and writes the file_version event.
  // Throws IoError.
  explicit EventWriter(const std::string& dir);
  ~EventWriter();
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  void add_scalar(const std::string& tag, double value, int64_t step);
  // Marks a session's start (SessionLog START): TensorBoard discards the points already read with
  // a step >= `step`, the stale tail of an interrupted run that a resume re-does. Its dashboard
  // reader (plugin_event_accumulator) ignores a run's first START, so every session writes one.
  void add_session_start(int64_t step);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& data);
  std::string path_;
  std::FILE* file_ = nullptr;
};

struct Event {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;
  bool session_start = false;
  std::vector<std::pair<std::string, float>> scalars;  // (tag, simple_value)
};

// Reads every record of an event file. Throws Error naming the file, the record and which CRC
// failed, or where a record is truncated.
std::vector<Event> read_events(const std::string& path);

}  // namespace mlkv::tensorboard
