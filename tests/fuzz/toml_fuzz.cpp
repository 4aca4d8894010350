// libFuzzer harness: the config loader (TOML++ and the schema) on arbitrary text. A config that
// loads must also survive the round trip through its resolved TOML (what checkpoints store)
// unchanged; a difference is a finding, like a crash or an untyped exception.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/config.h"
#include "core/errors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  mlkv::Config c;
  try {
    c = mlkv::config_from_toml_string(text, "fuzz.toml");
  } catch (const mlkv::Error&) {
    return 0;
  }
  const std::string resolved = mlkv::config_to_toml(c);
  try {
    mlkv::Config again = mlkv::config_from_toml_string(resolved, "fuzz.toml");
    if (!(again == c)) {
      std::fprintf(stderr, "resolved TOML reads back differently:\n%s\n", resolved.c_str());
      std::abort();
    }
  } catch (const mlkv::Error& e) {
    std::fprintf(stderr, "resolved TOML does not load: %s\n%s\n", e.what(), resolved.c_str());
    std::abort();
  }
  return 0;
}
