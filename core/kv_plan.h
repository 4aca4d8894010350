// KvPlan: which layers own K/V projections and how many KV heads they have (DESIGN §3).
// This is the single source of truth for MLKV sharing: the model, the kernels, tensor
// parallelism, the converter, checkpoints and the decode cache all read it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mlkv {

struct KvPlan {
  std::vector<int> owner;  // owner[l]: the layer whose K/V layer l attends to (owner[l] <= l)
  int kv_heads = 0;        // KV heads of every KV layer
  bool rope_shared_keys = true;  // false: seed-paper compatibility (non-owners read un-rotated K)

  // The paper's rule: owners are 0 and floor((i+1)*L/n) for i = 0..n-2.
  static KvPlan from_kv_layers(int layers, int kv_layers, int kv_heads);
  // An explicit, strictly increasing owner list starting at 0.
  static KvPlan from_owners(int layers, const std::vector<int>& owners, int kv_heads);

  int layers() const { return static_cast<int>(owner.size()); }
  bool is_owner(int l) const { return owner[l] == l; }
  std::vector<int> owners() const;  // the KV layers, ascending
  int kv_layers() const;
  // The highest layer reading owner o's K/V: backward starts the group's dK/dV sum there.
  int group_top(int o) const;
  // Query head q reads KV head q / (heads / kv_heads).
  int kv_head_of(int q_head, int heads) const { return q_head / (heads / kv_heads); }
  int64_t kv_cache_bytes_per_token(int head_dim, int bytes_per_elem) const {
    return int64_t{2} * kv_layers() * kv_heads * head_dim * bytes_per_elem;
  }
  // e.g. "MLKV-6 (kv_layers 6 x kv_heads 1)"; MHA/GQA/MQA names when every layer owns.
  std::string name(int heads) const;
  // Throws ConfigError (with `where` as context) when the plan cannot serve `heads` heads.
  void validate(int heads, const std::string& where) const;
  bool operator==(const KvPlan&) const = default;
};

}  // namespace mlkv
