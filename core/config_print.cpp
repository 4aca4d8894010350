// describe_config: the derived facts of a resolved config, computed from ModelSpec and
// ParamLayout so that --print-config shows exactly what the trainer will build.
#include "core/config_print.h"

#include <cstdio>
#include <sstream>

#include "core/param_layout.h"

namespace mlkv {
namespace {

std::string join(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s;
}

// 162322944 -> "162.32M": the exact count is printed beside it, this is for the eye.
std::string human(double v) {
  const char* units[] = {"", "K", "M", "G", "T", "P"};
  int u = 0;
  while (v >= 1000 && u < 5) v /= 1000, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f%s", v, units[u]);
  return buf;
}

}  // namespace

std::string describe_config(const Config& c) {
  const ModelSpec s = c.spec();
  const KvPlan& p = s.kv;
  ModelSpec mha = s;  // the same model without KV sharing, for the cache-size comparison
  mha.kv = KvPlan::from_kv_layers(s.layers, s.layers, s.heads);
  const int64_t cache = s.kv_cache_bytes_per_token(2), mha_cache = mha.kv_cache_bytes_per_token(2);
  const int64_t params = ParamLayout(s).total_params();
  const double flops = s.flops_per_token(c.train.seq_len);

  std::ostringstream o;
  o << "# ---- derived (not config keys) ----\n";
  o << "# model:           " << (c.model.name.empty() ? "(unnamed)" : c.model.name) << ": " << s.layers
    << " layers, d_model " << s.d_model << ", " << s.heads << " heads of dim " << s.head_dim() << " (rotary on "
    << s.rot_dims() << "), ffn " << s.ffn << ", vocab " << s.vocab << "\n";
  o << "# kv plan:         " << p.name(s.heads) << "\n";
  o << "# kv layers:       " << p.kv_layers() << " (owners " << join(p.owners()) << ")\n";
  o << "# kv heads:        " << p.kv_heads << " per KV layer, each read by " << s.heads / p.kv_heads
    << " query heads\n";
  o << "# owner of layer:  [" << join(p.owner) << "]\n";
  if (!p.rope_shared_keys) o << "# rope_shared_keys = false: seed-paper compatibility, non-owners read un-rotated K\n";
  o << "# parameters:      " << params << " (" << human(static_cast<double>(params)) << ")\n";
  o << "# flops/token:     " << static_cast<int64_t>(flops) << " (" << human(flops)
    << "; 6*N_matmul + 12*L*d*T at T = train.seq_len = " << c.train.seq_len << ")\n";
  o << "# kv cache bf16:   " << cache << " bytes/token";
  if (cache != mha_cache)
    o << " (MHA: " << mha_cache << ", " << static_cast<double>(mha_cache) / static_cast<double>(cache) << "x smaller)";
  o << "\n";
  o << "# tokens/step:     " << int64_t{c.train.micro_batch} * c.train.grad_accum * c.train.seq_len
    << " per data-parallel rank (micro_batch x grad_accum x seq_len)\n";
  return o.str();
}

}  // namespace mlkv
