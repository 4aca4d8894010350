// libFuzzer harness: safetensors::Reader (weights from the internet, checkpoints) on arbitrary
// bytes. Every typed mlkv::Error is an accepted outcome; anything else (a crash, a sanitizer
// report, an untyped exception, an abort) is a finding.
#include <cstdint>
#include <cstdlib>

#include "core/errors.h"
#include "core/safetensors.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mlkv::safetensors;
  try {
    const Reader r(mlkv::fuzz::input_file(data, size));
    for (const TensorInfo& t : r.tensors()) {
      try {
        (void)r.read_raw(t.name);
        switch (t.dtype) {
          case DType::F32: case DType::F16: case DType::BF16: case DType::F64:
            (void)r.read_f32(t.name);
            if (t.numel() > 1) {
              float two[2];
              r.read_f32_range(t.name, t.numel() - 2, 2, two);
            }
            break;
          case DType::BOOL:
            break;
          default:
            (void)r.read_i32(t.name);
        }
      } catch (const mlkv::Error&) {
      }
    }
  } catch (const mlkv::Error&) {
  }
  return 0;
}
