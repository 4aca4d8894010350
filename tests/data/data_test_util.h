// Helpers for the data tests: scratch directories, shards written through the raw HDF5 API
// (independent of ShardWriter, so tests can build malformed ones), and error assertions.
#pragma once
#include <gtest/gtest.h>
#include <hdf5.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "core/errors.h"

namespace mlkv::data::test {

// A fresh directory under the build tree, removed when the test ends.
class ScratchDir {
 public:
  ScratchDir() {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string(info->test_suite_name()) + "." + info->name() + "." +
                       std::to_string(counter++);
    std::replace(name.begin(), name.end(), '/', '_');  // parameterized names hold slashes
    path_ = std::filesystem::path(MLKV_BINARY_DIR) / "test_data_scratch" / name;
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() { std::filesystem::remove_all(path_); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Writes a shard by hand. `file_type` is the HDF5 type of /tokens (H5T_STD_U16LE, ...).
// Attributes given as nullopt are left out (to make incomplete shards).
inline void write_raw_shard(const std::string& path, const std::vector<uint32_t>& tokens,
                            hid_t file_type = H5T_STD_U16LE,
                            std::optional<int64_t> vocab_size = 50277,
                            std::optional<int64_t> format_version = 1,
                            std::optional<int64_t> max_token_id = std::nullopt) {
  hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hsize_t n = tokens.size(), chunk = std::max<hsize_t>(1, std::min<hsize_t>(n, 1024));
  hid_t space = H5Screate_simple(1, &n, nullptr);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 1, &chunk);
  hid_t dset = H5Dcreate2(file, "tokens", file_type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  if (n > 0) H5Dwrite(dset, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, tokens.data());
  auto attr = [&](const char* name, std::optional<int64_t> maybe) {
    if (!maybe) return;
    int64_t value = *maybe;
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(file, name, H5T_STD_I64LE, s, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT64, &value);
    H5Aclose(a);
    H5Sclose(s);
  };
  attr("format_version", format_version);
  attr("vocab_size", vocab_size);
  attr("eod_id", 0);
  attr("max_token_id", max_token_id);
  H5Dclose(dset);
  H5Pclose(dcpl);
  H5Sclose(space);
  H5Fclose(file);
}

// Runs `body`, expects a DataError whose message contains every one of `parts`.
template <typename Body>
void expect_data_error(Body&& body, const std::vector<std::string>& parts) {
  try {
    body();
    ADD_FAILURE() << "expected a DataError containing '" << (parts.empty() ? "" : parts[0])
                  << "'";
  } catch (const mlkv::DataError& e) {
    std::string what = e.what();
    EXPECT_EQ(e.exit_code(), mlkv::kExitBadInput);
    for (const std::string& part : parts) {
      EXPECT_NE(what.find(part), std::string::npos) << "message lacks '" << part << "': " << what;
    }
  }
}

}  // namespace mlkv::data::test
