// HDF5 helpers: quiet error stacks, readable error text, typed attribute I/O.
#include "data/h5.h"

#include "core/errors.h"

namespace mlkv::data::h5 {

void quiet_errors() {
  thread_local bool done = false;
  if (!done) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    done = true;
  }
}

namespace {
herr_t collect_message(unsigned depth, const H5E_error2_t* entry, void* out) {
  auto* text = static_cast<std::string*>(out);
  // Walking inward-first, the first two entries are the most specific reasons.
  if (depth < 2 && entry->desc != nullptr && entry->desc[0] != '\0') {
    if (!text->empty()) text->append("; ");
    text->append(entry->desc);
  }
  return 0;
}
}  // namespace

std::string last_error() {
  std::string text;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, collect_message, &text);
  H5Eclear2(H5E_DEFAULT);
  return text;
}

void Handle::reset() {
  if (id_ < 0) return;
  switch (H5Iget_type(id_)) {
    case H5I_FILE: H5Fclose(id_); break;
    case H5I_DATASET: H5Dclose(id_); break;
    case H5I_DATASPACE: H5Sclose(id_); break;
    case H5I_DATATYPE: H5Tclose(id_); break;
    case H5I_ATTR: H5Aclose(id_); break;
    case H5I_GENPROP_LST: H5Pclose(id_); break;
    case H5I_GROUP: H5Gclose(id_); break;
    default: break;
  }
  id_ = H5I_INVALID_HID;
}

bool has_attribute(hid_t object, const char* name) { return H5Aexists(object, name) > 0; }

bool read_int_attribute(hid_t object, const char* name, int64_t& value, const std::string& file) {
  if (!has_attribute(object, name)) return false;
  Handle attr(H5Aopen(object, name, H5P_DEFAULT));
  Handle type(attr.valid() ? H5Aget_type(attr.get()) : H5I_INVALID_HID);
  if (!type.valid() || H5Tget_class(type.get()) != H5T_INTEGER ||
      H5Aread(attr.get(), H5T_NATIVE_INT64, &value) < 0) {
    throw DataError(file + ": attribute '" + name + "' is not a readable integer " +
                    last_error());
  }
  return true;
}

bool read_string_attribute(hid_t object, const char* name, std::string& value,
                           const std::string& file) {
  if (!has_attribute(object, name)) return false;
  Handle attr(H5Aopen(object, name, H5P_DEFAULT));
  Handle type(attr.valid() ? H5Aget_type(attr.get()) : H5I_INVALID_HID);
  if (!type.valid() || H5Tget_class(type.get()) != H5T_STRING) {
    throw DataError(file + ": attribute '" + name + "' is not a string");
  }
  bool ok = true;
  if (H5Tis_variable_str(type.get()) > 0) {
    char* text = nullptr;
    Handle mem(H5Tcopy(H5T_C_S1));
    H5Tset_size(mem.get(), H5T_VARIABLE);
    ok = H5Aread(attr.get(), mem.get(), &text) >= 0;
    if (ok && text != nullptr) value = text;
    if (text != nullptr) H5free_memory(text);
  } else {
    std::string buffer(H5Tget_size(type.get()), '\0');
    ok = H5Aread(attr.get(), type.get(), buffer.data()) >= 0;
    value = buffer.substr(0, buffer.find('\0'));
  }
  if (!ok) throw DataError(file + ": cannot read attribute '" + name + "' " + last_error());
  return true;
}

void write_int_attribute(hid_t object, const char* name, int64_t value, const std::string& file) {
  if (has_attribute(object, name)) H5Adelete(object, name);
  Handle space(H5Screate(H5S_SCALAR));
  Handle attr(H5Acreate2(object, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT));
  if (!attr.valid() || H5Awrite(attr.get(), H5T_NATIVE_INT64, &value) < 0) {
    throw IoError(file + ": cannot write attribute '" + name + "' " + last_error());
  }
}

void write_string_attribute(hid_t object, const char* name, const std::string& value,
                            const std::string& file) {
  if (has_attribute(object, name)) H5Adelete(object, name);
  Handle type(H5Tcopy(H5T_C_S1));
  H5Tset_size(type.get(), value.empty() ? 1 : value.size());
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  Handle space(H5Screate(H5S_SCALAR));
  Handle attr(H5Acreate2(object, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT));
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  if (!attr.valid() || H5Awrite(attr.get(), type.get(), padded.data()) < 0) {
    throw IoError(file + ": cannot write attribute '" + name + "' " + last_error());
  }
}

}  // namespace mlkv::data::h5
