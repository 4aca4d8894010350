// Thin RAII and error helpers over the HDF5 C API, shared by the shard writer and reader.
// HDF5 reports failures as negative return values plus a per-thread error stack; we turn
// them into mlkv::DataError / IoError messages that carry HDF5's innermost reason.
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <string>
#include <utility>

namespace mlkv::data::h5 {

// Silences HDF5's automatic stack printing for the calling thread (the error stack and its
// printing hook are per-thread in the thread-safe build, so every thread that calls HDF5 must
// call this once).
void quiet_errors();

// The innermost messages of the calling thread's HDF5 error stack, e.g. "truncated file: eof =
// 96, ..."; empty when the stack is empty.
std::string last_error();

// Owns one hid_t and closes it with the matching H5?close on destruction.
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  Handle(Handle&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset();

 private:
  hid_t id_ = H5I_INVALID_HID;
};

bool has_attribute(hid_t object, const char* name);
// Attribute readers return false when the attribute is absent; they throw DataError (naming
// `file`) when it exists but has the wrong class.
bool read_int_attribute(hid_t object, const char* name, int64_t& value, const std::string& file);
bool read_string_attribute(hid_t object, const char* name, std::string& value,
                           const std::string& file);
void write_int_attribute(hid_t object, const char* name, int64_t value, const std::string& file);
void write_string_attribute(hid_t object, const char* name, const std::string& value,
                            const std::string& file);

}  // namespace mlkv::data::h5
