// The resolved run configuration (TOML, DESIGN §5). The schema — every key, its type, default,
// range and documentation — lives once in config.cpp; configs/README.md is generated from it
// (`mlkv-train --config-doc`) and a test keeps the two equal.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/model_spec.h"

namespace mlkv {

struct ModelSection {
  std::string name;           // free text, e.g. "pythia-160m"
  int layers = 0;             // required
  int d_model = 0;            // required
  int heads = 0;              // required
  int64_t vocab_size = 50304;
  int max_seq_len = 2048;
  double rotary_pct = 0.25;
  double rotary_base = 10000.0;
  double ln_eps = 1e-5;
  int ffn = 0;                // 0 = 4·d_model
  bool operator==(const ModelSection&) const = default;
};

struct KvSection {
  int kv_heads = 0;           // 0 = model.heads (MHA)
  int kv_layers = 0;          // 0 = model.layers; ignored when owners is given
  std::vector<int> owners;    // explicit owner list (overrides kv_layers)
  bool rope_shared_keys = true;
  std::string merge = "mean";  // conversion across a group: mean | paper | owner
  bool widen_mlp = false;     // conversion: widen the MLP to restore the parameter count
  bool operator==(const KvSection&) const = default;
};

struct TrainSection {
  int64_t steps = 0;          // required: optimizer steps
  int micro_batch = 1;        // sequences per micro-step per data-parallel rank
  int grad_accum = 1;         // micro-steps per optimizer step
  int seq_len = 2048;
  uint64_t seed = 1234;
  std::string backend = "auto";     // auto | cpu | cuda
  std::string attention = "auto";   // auto (faster measured per head dim) | flash (ours) | cudnn
  std::string recompute = "none";   // none | attention | block
  std::string init_from;            // checkpoint dir to start from (step 0), e.g. from mlkv-convert
  int64_t eval_interval = 0;        // steps between validation passes (0 = only at the end)
  int64_t eval_batches = 8;         // global batches per validation pass
  int max_bad_steps = 5;            // consecutive non-finite steps before stopping
  int threads = 0;                  // CPU backend threads (0 = all cores)
  bool allow_batch_change = false;  // resume a checkpoint written with another global batch
  bool operator==(const TrainSection&) const = default;
};

struct OptimSection {
  double lr = 6e-4;
  double min_lr_ratio = 0.1;  // cosine decays to lr·min_lr_ratio
  double warmup_fraction = 0.01;
  int64_t warmup_steps = -1;  // >= 0 overrides warmup_fraction
  std::string schedule = "cosine";  // cosine | constant | linear
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;     // 0 = off
  bool operator==(const OptimSection&) const = default;
};

struct DataSection {
  std::string path;           // required for training: shard dir, file or glob
  std::string val_path;       // held-out shards (or use val_fraction)
  double val_fraction = 0.0;
  bool shuffle = true;
  int prefetch = 4;
  std::string verify = "auto";  // auto | full | lazy: when shard chunks are checked
  bool operator==(const DataSection&) const = default;
};

struct CheckpointSection {
  std::string dir = "checkpoints";
  int64_t interval = 0;       // steps between checkpoints (0 = only at the end)
  int keep_last = 3;
  bool operator==(const CheckpointSection&) const = default;
};

struct LogSection {
  std::string dir = "runs/default";  // metrics.jsonl and TensorBoard events
  int64_t interval = 10;
  bool tensorboard = true;
  double peak_flops = 989e12;  // for MFU; H100 SXM bf16 dense
  bool operator==(const LogSection&) const = default;
};

struct ParallelSection {
  int tp = 1;
  bool zero1 = true;
  double bucket_mb = 25.0;
  double comm_timeout_s = 600.0;  // any collective (MPI or NCCL); was nccl_timeout_s
  bool operator==(const ParallelSection&) const = default;
};

struct Config {
  std::string source;         // the file it was read from
  ModelSection model;
  KvSection kv;
  TrainSection train;
  OptimSection optim;
  DataSection data;
  CheckpointSection checkpoint;
  LogSection log;
  ParallelSection parallel;

  ModelSpec spec() const;     // the architecture, with its KvPlan (validated; throws ConfigError)
  // Field-by-field equality, `source` included (tests compare a round trip with it copied).
  bool operator==(const Config&) const = default;
};

// Reads FILE (following `include = "base.toml"` chains, later files winning), applies
// `section.key=value` overrides in order, validates. Throws ConfigError naming file:line:col and key.
Config load_config(const std::string& file, const std::vector<std::string>& overrides = {});
// The fully resolved config as TOML (what checkpoints store and --print-config shows).
std::string config_to_toml(const Config& c);
// Parses a resolved TOML string (from a checkpoint) back.
Config config_from_toml_string(const std::string& toml, const std::string& source_name);
// Markdown documentation of every key, generated from the schema.
std::string config_doc_markdown();

}  // namespace mlkv
