// ModelSpec: the architecture of one GPT-NeoX/MLKV model, resolved from the config (DESIGN §2–§4).
// Everything shape-related (parameter layout, FLOPs, cache size) derives from this.
#pragma once
#include <cstdint>
#include <string>

#include "core/kv_plan.h"

namespace mlkv {

struct ModelSpec {
  int layers = 0;
  int d_model = 0;
  int heads = 0;
  int64_t vocab = 0;       // padded vocabulary (50304 for Pythia 70M–2.8B)
  int max_seq_len = 2048;  // longest sequence the rotary tables are built for
  double rotary_pct = 0.25;
  double rotary_base = 10000.0;
  double ln_eps = 1e-5;
  int ffn = 0;             // MLP hidden width: 4·d, or wider with the paper's MLP widening
  KvPlan kv;

  int head_dim() const { return d_model / heads; }
  int rot_dims() const { return static_cast<int>(head_dim() * rotary_pct); }
  // Rows of layer l's fused q|k|v projection: H·hd, plus 2·KVH·hd in owner layers.
  int qkv_rows(int l) const { return (heads + (kv.is_owner(l) ? 2 * kv.kv_heads : 0)) * head_dim(); }

  // Weights used in matmuls (embed_out included, embed_in excluded), DESIGN §4.
  int64_t matmul_params() const;
  // FLOPs per token = 6·N_matmul + 12·L·d·T (DESIGN §4).
  double flops_per_token(int seq_len) const { return 6.0 * matmul_params() + 12.0 * layers * d_model * seq_len; }
  int64_t kv_cache_bytes_per_token(int bytes_per_elem) const {
    return kv.kv_cache_bytes_per_token(head_dim(), bytes_per_elem);
  }
  // Throws ConfigError when the shapes do not fit together; `where` names the config file.
  void validate(const std::string& where) const;
};

}  // namespace mlkv
