// KvPlan construction and validation (DESIGN §3).
#include "core/kv_plan.h"

#include "core/errors.h"

namespace mlkv {

static KvPlan plan_from_owner_list(int layers, const std::vector<int>& owners, int kv_heads) {
  KvPlan p;
  p.kv_heads = kv_heads;
  p.owner.assign(layers, 0);
  size_t next = 0;
  for (int l = 0; l < layers; ++l) {
    while (next < owners.size() && owners[next] <= l) ++next;
    p.owner[l] = owners[next - 1];
  }
  return p;
}

KvPlan KvPlan::from_kv_layers(int layers, int kv_layers, int kv_heads) {
  if (layers < 1) throw ConfigError("kv plan: layers must be >= 1, got " + std::to_string(layers));
  if (kv_layers < 1 || kv_layers > layers)
    throw ConfigError("kv plan: kv_layers = " + std::to_string(kv_layers) + " must be in [1, layers = " +
                      std::to_string(layers) + "]");
  std::vector<int> owners{0};
  for (int i = 0; i + 1 < kv_layers; ++i) owners.push_back(static_cast<int>((int64_t{i} + 1) * layers / kv_layers));
  return plan_from_owner_list(layers, owners, kv_heads);
}

KvPlan KvPlan::from_owners(int layers, const std::vector<int>& owners, int kv_heads) {
  if (owners.empty() || owners[0] != 0) throw ConfigError("kv plan: owners must start at 0");
  for (size_t i = 1; i < owners.size(); ++i)
    if (owners[i] <= owners[i - 1])
      throw ConfigError("kv plan: owners must be strictly increasing, but owners[" + std::to_string(i) +
                        "] = " + std::to_string(owners[i]) + " follows " + std::to_string(owners[i - 1]));
  if (owners.back() >= layers)
    throw ConfigError("kv plan: owner " + std::to_string(owners.back()) + " is not a layer (layers = " +
                      std::to_string(layers) + ")");
  return plan_from_owner_list(layers, owners, kv_heads);
}

std::vector<int> KvPlan::owners() const {
  std::vector<int> out;
  for (int l = 0; l < layers(); ++l)
    if (is_owner(l)) out.push_back(l);
  return out;
}

int KvPlan::kv_layers() const { return static_cast<int>(owners().size()); }

int KvPlan::group_top(int o) const {
  int top = o;
  for (int l = o; l < layers(); ++l)
    if (owner[l] == o) top = l;
  return top;
}

std::string KvPlan::name(int heads) const {
  const int total = kv_layers() * kv_heads;
  const std::string shape =
      " (kv_layers " + std::to_string(kv_layers()) + " x kv_heads " + std::to_string(kv_heads) + ")";
  if (kv_layers() == layers()) {
    if (kv_heads == heads) return "MHA-" + std::to_string(total) + shape;
    if (kv_heads == 1) return "MQA-" + std::to_string(total) + shape;
    return "GQA-" + std::to_string(total) + shape;
  }
  return "MLKV-" + std::to_string(total) + shape;
}

void KvPlan::validate(int heads, const std::string& where) const {
  if (owner.empty()) throw ConfigError(where + ": kv plan has no layers");
  if (kv_heads < 1 || kv_heads > heads || heads % kv_heads != 0)
    throw ConfigError(where + ": kv_heads = " + std::to_string(kv_heads) + " must divide heads = " +
                      std::to_string(heads));
  if (owner[0] != 0) throw ConfigError(where + ": layer 0 must own its K/V");
  for (int l = 1; l < layers(); ++l)
    if (owner[l] > l || owner[owner[l]] != owner[l] || owner[l] < owner[l - 1])
      throw ConfigError(where + ": owner[" + std::to_string(l) + "] = " + std::to_string(owner[l]) +
                        " is not the nearest KV layer at or below " + std::to_string(l));
}

}  // namespace mlkv
