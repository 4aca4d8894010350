// Checkpoints (DESIGN §7): one directory per step, written beside its final place, fsync'd and
// renamed into place only when complete, then a `latest` pointer is swapped in atomically.
//
//   DIR/step-00000100/model.safetensors   fp32 master weights, one tensor per ParamView name
//      .../optim.safetensors              AdamW moments "m.<name>", "v.<name>" (absent: fresh optimizer)
//      .../config.toml                    the resolved config of the run that wrote it
//      .../state.json                     step, Adam t, RNG, sampler, KV plan, and the size and
//                                         CRC-32 of every other file (the manifest)
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
#include "core/param_layout.h"
#include "data/loader.h"

// Feature macro: this header declares save_checkpoint_streamed (mlkv-convert import writes with it).
#define MLKV_HAVE_STREAMED_CHECKPOINT 1

namespace mlkv {

inline constexpr int kCheckpointFormatVersion = 1;

struct TrainState {
  int64_t step = 0;            // completed optimizer steps (skipped bad steps included)
  int64_t adam_t = 0;          // AdamW's bias-correction counter (completed updates)
  uint64_t rng_state = 0;      // the trainer's Rng
  data::SamplerState sampler;  // of the next training batch
  int64_t tokens_seen = 0;     // training targets consumed, all ranks
  double last_val_loss = NAN;
  int64_t consecutive_bad = 0;  // non-finite steps in a row at the time of writing
  int dp = 1, tp = 1;           // the layout that wrote it (informational; moments are by name)
};

struct CheckpointData {
  Config config;
  std::vector<float> master;  // ParamLayout(config.spec()) order, length layout.total()
  std::vector<float> m, v;    // same layout; empty = fresh optimizer (e.g. a converted model)
  TrainState state;
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

// Loads a step directory, or a run directory (its newest complete checkpoint; `latest` is a hint).
// Verifies the format version, every file's size and CRC-32, every tensor's name and shape.
// Throws CheckpointError naming the file and what is wrong.
CheckpointData load_checkpoint(const std::string& path);
// As load_checkpoint, but only the master weights (init_from: a converted model at step 0).
CheckpointData load_checkpoint_weights(const std::string& path);

// The newest complete checkpoint of DIR: its state.json parses and every file has the size the
// manifest records (CRCs are checked by load_checkpoint). Incomplete or foreign directories are
// skipped with a warning. nullopt when there is none (or DIR does not exist).
std::optional<std::string> find_latest(const std::string& dir);

// Refuses (CheckpointError) a checkpoint whose model shape or KV plan differs from the run's,
// naming each difference; `where` names the checkpoint. Training settings may differ freely.
void check_compatible(const Config& checkpoint, const Config& run, const std::string& where);

// Creates DIR if needed and proves that files can be created, fsync'd, renamed and removed there;
// throws ConfigError naming `key` (e.g. "checkpoint.dir") and the OS reason. Called at start-up so
// an unwritable directory stops the run before any training.
void probe_writable_dir(const std::string& dir, const std::string& key);

// CRC-32 (IEEE 802.3, the zlib/PNG polynomial), continuing from `crc` (0 to start).
uint32_t crc32_update(uint32_t crc, const void* data, size_t bytes);
uint32_t crc32_file(const std::string& path);  // throws IoError

// "step-00000100" for step 100.
std::string checkpoint_dir_name(int64_t step);

}  // namespace mlkv
