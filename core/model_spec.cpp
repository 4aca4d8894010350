// ModelSpec derived quantities and validation.
#include "core/model_spec.h"

#include "core/errors.h"

namespace mlkv {

int64_t ModelSpec::matmul_params() const {
  const int64_t d = d_model;
  int64_t n = vocab * d;  // embed_out
  for (int l = 0; l < layers; ++l) n += int64_t{qkv_rows(l)} * d + d * d + 2 * int64_t{ffn} * d;
  return n;
}

void ModelSpec::validate(const std::string& where) const {
  auto fail = [&](const std::string& m) { throw ConfigError(where + ": " + m); };
  if (layers < 1) fail("model.layers must be >= 1");
  if (heads < 1 || d_model < 1 || d_model % heads != 0)
    fail("model.d_model = " + std::to_string(d_model) + " must be a positive multiple of model.heads = " +
         std::to_string(heads));
  if (rot_dims() % 2 != 0 || rot_dims() > head_dim())
    fail("rotary dims (head_dim * rotary_pct = " + std::to_string(rot_dims()) + ") must be even and <= head_dim");
  if (vocab < 2) fail("model.vocab_size must be >= 2");
  if (ffn < 1) fail("model.ffn must be >= 1");
  if (kv.layers() != layers)
    fail("kv plan covers " + std::to_string(kv.layers()) + " layers but the model has " + std::to_string(layers));
  kv.validate(heads, where);
}

}  // namespace mlkv
