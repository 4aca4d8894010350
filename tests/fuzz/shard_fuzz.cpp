// libFuzzer harness: the token-shard reader (HDF5 header checks, chunk checksums, hyperslab
// reads, /doc_offsets) on arbitrary bytes. The HDF5 library itself is not instrumented, so this
// finds what our checks let through (and crashes inside libhdf5 that our checks should prevent).
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "core/errors.h"
#include "data/shard_reader.h"
#include "tests/fuzz/fuzz_input.h"

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
  return 0;
}
