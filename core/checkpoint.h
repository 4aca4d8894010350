// Checkpoints (DESIGN §7): one directory per step, written beside its final place, fsync'd and
// renamed into place only when complete, then a `latest` pointer is swapped in atomically.
//
//   DIR/step-00000100/model.safetensors   fp32 master weights, one tensor per ParamView name
//      .../optim.safetensors              AdamW moments "m.<name>", "v.<name>" (absent: fresh optimizer)
//      .../config.toml                    the resolved config of the run that wrote it
//      .../state.json                     step, Adam t, RNG, sampler, global batch, model shape, KV
//                                         plan, the size and CRC-32 of every other file (the
//                                         manifest), and `state_crc32`: the CRC-32 of the manifest
//                                         itself (of its text as written without that member)
//   DIR/latest                            "step-00000100\n"
//
// Moments are stored per tensor by name, not as one flat vector, so that a later run with another
// DP/TP layout (or ZeRO-1 sharding) re-slices them by name. A run that shards them gathers full
// tensors before save_checkpoint (see MomentsHook in core/trainer.h).
//
// Test only: MLKV_TEST_SLOW_CHECKPOINT_MS=N makes save_checkpoint sleep N ms between its files, so
// the SIGKILL test can land kills inside a write. Never set it in real runs.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/crc32.h"
#include "core/param_layout.h"
#include "data/loader.h"

// Feature macro: this header declares save_checkpoint_streamed (mlkv-convert import writes with it).
#define MLKV_HAVE_STREAMED_CHECKPOINT 1

namespace mlkv {

// 2: state.json carries state_crc32 and global_batch. Version 1 (no state_crc32) is still read.
inline constexpr int kCheckpointFormatVersion = 2;

struct TrainState {
  int64_t step = 0;            // completed optimizer steps (skipped bad steps included)
  int64_t adam_t = 0;          // AdamW's bias-correction counter (completed updates)
  uint64_t rng_state = 0;      // the trainer's Rng
  data::SamplerState sampler;  // of the next training batch
  int64_t tokens_seen = 0;     // training targets consumed, all ranks
  double last_val_loss = NAN;
  int64_t consecutive_bad = 0;  // non-finite steps in a row at the time of writing
  int dp = 1, tp = 1;           // the layout that wrote it (informational; moments are by name)
  int64_t global_batch = 0;     // sequences per step of the run that wrote it (0: not recorded)
};

// state.json, parsed and checked on its own (its CRC, its types, its file list): what
// verification compares with the files and config.toml beside it.
struct CheckpointManifest {
  struct File {
    std::string name;
    uint64_t bytes = 0;
    uint32_t crc32 = 0;
  };
  TrainState state;
  std::vector<File> files;
  // The `model` block and the KV plan, which must agree with config.toml.
  int layers = 0, d_model = 0, heads = 0, ffn = 0;
  int64_t vocab = 0, params = 0;
  std::vector<int> kv_owner;
  int kv_heads = 0;
  bool rope_shared_keys = true;
  const File* find(const std::string& name) const;
};
// Parses the text of a state.json (`path` names it in errors). Throws CheckpointError.
CheckpointManifest parse_manifest(const std::string& text, const std::string& path);

struct CheckpointData {
  Config config;
  std::vector<float> master;  // ParamLayout(config.spec()) order, length layout.total()
  std::vector<float> m, v;    // same layout; empty = fresh optimizer (e.g. a converted model)
  TrainState state;
  std::string dir;  // load_checkpoint: the step directory it was read from
};

// Writes DIR/step-<step>/ atomically (see above), points DIR/latest at it and keeps the newest
// `keep_last` complete checkpoints (never deleting the one just written or the one `latest` names;
// keep_last <= 0 keeps all). Returns the final path. Throws IoError.
std::string save_checkpoint(const std::string& dir, const CheckpointData& data, int keep_last);

// Fills the `view.numel` fp32 values of one master tensor (ParamLayout(config.spec()) order).
using CheckpointFill = std::function<void(const ParamView& view, float* out)>;

// save_checkpoint without the whole model in memory: model.safetensors is written one tensor at a
// time, `fill` producing each (once, in layout order) into a buffer of that tensor's size, so the
// peak is the largest tensor. Writes no optimizer file (a fresh optimizer, as for a converted model).
// Same directory protocol, manifest and CRCs as save_checkpoint, which is this with a fill that
// copies from CheckpointData::master.
std::string save_checkpoint_streamed(const std::string& dir, const Config& config, const TrainState& state,
                                     const CheckpointFill& fill, int keep_last);

// Loads a step directory, or a run directory (its newest whole checkpoint, see find_latest).
// Verifies (verify_checkpoint) before reading any tensor. Throws CheckpointError naming the file
// and what is wrong; for a run directory, with the reason of every checkpoint it skipped.
CheckpointData load_checkpoint(const std::string& path);
// As load_checkpoint, but only the master weights (init_from: a converted model at step 0).
CheckpointData load_checkpoint_weights(const std::string& path);

// Every check that load_checkpoint makes, without reading tensor values: state.json parses and its
// own CRC matches, every file has its recorded size and CRC-32, config.toml loads and agrees with
// the manifest's model block and KV plan, and every tensor of model.safetensors (and, when
// `with_optimizer`, optim.safetensors) has the name and shape the config implies. Throws
// CheckpointError (or ConfigError for config.toml) naming the file.
void verify_checkpoint(const std::string& step_dir, bool with_optimizer = true);

// The newest whole checkpoint of DIR: `latest` first, then step directories newest first, each
// verified as load_checkpoint would (verify_checkpoint); one that fails is skipped with a warning
// naming the file and the reason. nullopt when none is whole (or DIR does not exist).
std::optional<std::string> find_latest(const std::string& dir);

// Step directories of DIR ("step-*", whole or not), newest first; empty when DIR does not exist.
std::vector<std::string> checkpoint_dirs(const std::string& dir);

// Refuses (CheckpointError) a checkpoint whose model shape or KV plan differs from the run's,
// naming each difference; `where` names the checkpoint. Training settings may differ freely.
void check_compatible(const Config& checkpoint, const Config& run, const std::string& where);

// Refuses (ConfigError) a resume whose global batch (sequences per step: micro_batch × grad_accum ×
// dp) differs from the checkpoint's, e.g. a dp 2 run resumed on one rank with the same micro_batch
// and grad_accum: every later step would consume another number of tokens under a schedule that
// was planned in steps, which is nearly always an accident. With `allow` it only warns, loudly.
// Checkpoints that predate TrainState::global_batch are judged by their config.toml and dp.
void check_resume_batch(const CheckpointData& checkpoint, int64_t run_global_batch, bool allow);

// Creates DIR if needed and proves that files can be created, fsync'd, renamed and removed there;
// throws ConfigError naming `key` (e.g. "checkpoint.dir") and the OS reason. Called at start-up so
// an unwritable directory stops the run before any training.
void probe_writable_dir(const std::string& dir, const std::string& key);

// "step-00000100" for step 100.
std::string checkpoint_dir_name(int64_t step);

}  // namespace mlkv
