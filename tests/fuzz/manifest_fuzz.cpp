// libFuzzer harness: the checkpoint manifest reader (state.json: its own CRC, the file list, the
// model block, the KV plan, the training state) on arbitrary text. Typed mlkv::Errors are the
// accepted outcome; a crash, a sanitizer report or any other exception is a finding.
#include <cstdint>
#include <string>

#include "core/checkpoint.h"
#include "core/errors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    (void)mlkv::parse_manifest(std::string(reinterpret_cast<const char*>(data), size), "fuzz/state.json");
  } catch (const mlkv::Error&) {
  }
  return 0;
}
