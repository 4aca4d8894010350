// libFuzzer harness: the token-shard reader (HDF5 header checks, chunk checksums, hyperslab
// reads, /doc_offsets) on arbitrary bytes. The HDF5 library itself is not instrumented, so this
// finds what our checks let through (and crashes inside libhdf5 that our checks should prevent).
//
// Leaks: libhdf5 1.10 itself loses a few blocks when H5Fopen fails on some corrupt root groups
// (H5F_open → H5G_mkroot → H5O_protect; found by this harness), which nothing outside the library
// can free. Those are suppressed, and what our code does own is checked instead: once the reader
// is gone, no HDF5 object (file, dataset, dataspace, attribute...) may be left open.
#include <hdf5.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/errors.h"
#include "data/shard_reader.h"
#include "tests/fuzz/fuzz_input.h"

// A corrupt metadata length makes libhdf5 ask malloc for absurd sizes (0xb9ffffffffffff, found
// by this harness); libc returns NULL there and HDF5 reports "memory allocation failed", which the
// reader turns into a DataError. ASan would stop at the request instead: let it return NULL too.
extern "C" const char* __lsan_default_suppressions() { return "leak:libhdf5\n"; }
extern "C" const char* __asan_default_options() { return "allocator_may_return_null=1"; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool no_locks = [] { return ::setenv("HDF5_USE_FILE_LOCKING", "FALSE", 1) == 0; }();
  (void)no_locks;
  try {
    mlkv::data::ShardReader r(mlkv::fuzz::input_file(data, size));
    // Unallocated HDF5 chunks read as fill values without any I/O, so a header may claim far more
    // tokens than the input holds: read a bounded prefix.
    const int64_t n = std::min<int64_t>(r.info().num_tokens, int64_t{1} << 18);
    std::vector<int32_t> tokens(4096);
    for (int64_t at = 0; at < n; at += 4096) {
      const int64_t count = std::min<int64_t>(4096, n - at);
      r.read(at, count, tokens.data());
    }
    (void)r.doc_offsets();
  } catch (const mlkv::Error&) {
  }
  if (const ssize_t open = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL); open != 0) {
    std::fprintf(stderr, "%zd HDF5 objects left open by the shard reader\n", open);
    std::abort();
  }
  return 0;
}
