// Checkpoints: CRC-32 check values, a bit-exact save/load round trip, the directory layout and
// `latest`, retention, incomplete or damaged checkpoints never taken, foreign models refused with
// the reason, and unwritable directories reported before anything is written. And the faults
// around a resume (issue 17): --resume auto takes the newest WHOLE checkpoint, a changed global
// batch is refused, a run stopped by non-finite steps is not stepped again, damaged data mid-run
// and a failing log.dir cost no checkpoint, and a refused run creates no output directories.
#include "core/checkpoint.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/param_layout.h"
#include "core/rng.h"
#include "core/trainer.h"
#include "trainer_test_util.h"

namespace mlkv {
namespace {

namespace fs = std::filesystem;

CheckpointData random_checkpoint(const Config& cfg, int64_t step, uint64_t seed) {
  CheckpointData d;
  d.config = cfg;
  const ParamLayout layout(cfg.spec());
  Rng rng(seed);
  // Only the views hold values; the alignment gaps between them are zero, as in a real model.
  for (auto* v : {&d.master, &d.m, &d.v}) {
    v->assign(static_cast<size_t>(layout.total()), 0.0f);
    for (const ParamView& view : layout.views())
      for (int64_t i = 0; i < view.numel; ++i) (*v)[view.offset + i] = static_cast<float>(rng.normal());
  }
  d.state.step = step;
  d.state.adam_t = step - 1;
  d.state.rng_state = 0xFEDCBA9876543210ull + seed;
  d.state.sampler = {3, 1234567 + static_cast<uint64_t>(step)};
  d.state.tokens_seen = 1000 * step;
  d.state.last_val_loss = 2.5;
  d.state.consecutive_bad = 1;
  d.state.global_batch = int64_t{cfg.train.micro_batch} * cfg.train.grad_accum;
  return d;
}

std::string expect_checkpoint_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const CheckpointError& e) {
    EXPECT_EQ(e.exit_code(), kExitBadInput);
    return e.what();
  }
  ADD_FAILURE() << "no CheckpointError";
  return "";
}

class CheckpointTest : public ::testing::Test {
 protected:
  test::TempDir dir{"ckpt"};
  Config cfg = load_config(test::tiny_config(dir));
  std::string ckpt_dir = dir / "ckpt";
};

TEST(Crc32, KnownValues) {
  EXPECT_EQ(crc32_update(0, "123456789", 9), 0xCBF43926u);  // the standard check value
  EXPECT_EQ(crc32_update(0, "", 0), 0u);
  // Slice-by-8 and byte-at-a-time paths agree, in pieces of any size.
  std::string s(1000, '\0');
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(i * 7 + 3);
  uint32_t piecewise = 0;
  for (size_t off = 0; off < s.size(); off += 13) piecewise = crc32_update(piecewise, s.data() + off, std::min<size_t>(13, s.size() - off));
  EXPECT_EQ(piecewise, crc32_update(0, s.data(), s.size()));
}

TEST_F(CheckpointTest, RoundTripIsBitExact) {
  const CheckpointData d = random_checkpoint(cfg, 100, 1);
  const std::string path = save_checkpoint(ckpt_dir, d, 3);
  EXPECT_EQ(path, ckpt_dir + "/step-00000100");
  for (const char* f : {"model.safetensors", "optim.safetensors", "config.toml", "state.json"})
    EXPECT_TRUE(fs::exists(path + "/" + f)) << f;
  EXPECT_EQ(test::read_text(ckpt_dir + "/latest"), "step-00000100\n");

  for (const std::string& from : {path, ckpt_dir}) {  // a step dir, or the run's dir via `latest`
    const CheckpointData l = load_checkpoint(from);
    EXPECT_EQ(0, std::memcmp(l.master.data(), d.master.data(), d.master.size() * 4));
    EXPECT_EQ(0, std::memcmp(l.m.data(), d.m.data(), d.m.size() * 4));
    EXPECT_EQ(0, std::memcmp(l.v.data(), d.v.data(), d.v.size() * 4));
    EXPECT_EQ(l.state.step, 100);
    EXPECT_EQ(l.state.adam_t, 99);
    EXPECT_EQ(l.state.rng_state, d.state.rng_state);
    EXPECT_EQ(l.state.sampler, d.state.sampler);
    EXPECT_EQ(l.state.tokens_seen, 100000);
    EXPECT_EQ(l.state.last_val_loss, 2.5);
    EXPECT_EQ(l.state.consecutive_bad, 1);
    Config expected = cfg;
    expected.source = l.config.source;
    EXPECT_TRUE(l.config == expected) << "the resolved config does not round-trip";
  }
  // Weights only (init_from) and a fresh-optimizer checkpoint (what mlkv-convert writes).
  EXPECT_TRUE(load_checkpoint_weights(path).m.empty());
  CheckpointData fresh = d;
  fresh.m.clear();
  fresh.v.clear();
  fresh.state.step = 0;
  const std::string p0 = save_checkpoint(dir / "converted", fresh, 1);
  EXPECT_FALSE(fs::exists(p0 + "/optim.safetensors"));
  EXPECT_TRUE(load_checkpoint(p0).m.empty());
}

TEST_F(CheckpointTest, StreamedSaveEqualsTheVectorSave) {
  // A fresh-optimizer checkpoint (what mlkv-convert writes), saved from a vector and streamed.
  CheckpointData d = random_checkpoint(cfg, 0, 7);
  d.m.clear();
  d.v.clear();
  const std::string a = save_checkpoint(dir / "vector", d, 0);
  const ParamLayout layout(cfg.spec());
  size_t calls = 0;
  const std::string b = save_checkpoint_streamed(
      dir / "streamed", d.config, d.state,
      [&](const ParamView& v, float* out) {
        // Once per tensor, in layout order, into a buffer of exactly that tensor.
        EXPECT_EQ(v.name, layout.views()[calls].name);
        ++calls;
        for (int64_t i = 0; i < v.numel; ++i) out[i] = d.master[v.offset + i];
      },
      0);
  EXPECT_EQ(calls, layout.views().size());
  EXPECT_EQ(b, dir / "streamed/step-00000000");
  EXPECT_EQ(test::read_text(dir / "streamed/latest"), "step-00000000\n");
  EXPECT_FALSE(fs::exists(b + "/optim.safetensors"));
  // The same bytes on disk (hence the same sizes and CRCs in the manifest) ...
  for (const char* f : {"model.safetensors", "config.toml", "state.json"})
    EXPECT_TRUE(test::read_text(a + "/" + f) == test::read_text(b + "/" + f)) << f;
  // ... and the same weights loaded back, bit for bit (CRCs verified by the load).
  const CheckpointData la = load_checkpoint(a), lb = load_checkpoint(b);
  ASSERT_EQ(la.master.size(), d.master.size());
  ASSERT_EQ(lb.master.size(), d.master.size());
  EXPECT_EQ(0, std::memcmp(lb.master.data(), la.master.data(), la.master.size() * 4));
  EXPECT_EQ(0, std::memcmp(lb.master.data(), d.master.data(), d.master.size() * 4));
  EXPECT_TRUE(lb.m.empty());
  EXPECT_EQ(lb.state.rng_state, d.state.rng_state);
  EXPECT_EQ(lb.state.sampler, d.state.sampler);

  // A fill that fails halfway leaves neither a step directory nor a temporary behind, and the
  // previous checkpoint stays `latest`.
  TrainState next = d.state;
  next.step = 5;
  size_t n = 0;
  EXPECT_THROW(save_checkpoint_streamed(
                   dir / "streamed", d.config, next,
                   [&](const ParamView&, float*) {
                     if (++n == 3) throw CheckpointError("source tensor unreadable");
                   },
                   0),
               CheckpointError);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir / "streamed")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"latest", "step-00000000"}));
  EXPECT_EQ(*find_latest(dir / "streamed"), b);
}

TEST_F(CheckpointTest, KeepsTheLastNAndLatest) {
  for (int64_t s = 5; s <= 25; s += 5) save_checkpoint(ckpt_dir, random_checkpoint(cfg, s, s), 2);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(ckpt_dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"latest", "step-00000020", "step-00000025"}));
  EXPECT_EQ(*find_latest(ckpt_dir), ckpt_dir + "/step-00000025");
}

TEST_F(CheckpointTest, IncompleteOrDamagedCheckpointsAreNeverTaken) {
  for (int64_t s : {10, 20, 30}) save_checkpoint(ckpt_dir, random_checkpoint(cfg, s, s), 0);
  // A writer killed mid-way leaves a hidden temporary directory: invisible to find_latest.
  fs::create_directories(ckpt_dir + "/.step-00000040.tmp-999999");
  std::ofstream(ckpt_dir + "/.step-00000040.tmp-999999/model.safetensors") << "partial";
  EXPECT_EQ(*find_latest(ckpt_dir), ckpt_dir + "/step-00000030");

  // Truncated model file in the newest: find_latest falls back, load names the problem.
  const std::string s30 = ckpt_dir + "/step-00000030";
  fs::resize_file(s30 + "/model.safetensors", fs::file_size(s30 + "/model.safetensors") - 100);
  EXPECT_EQ(*find_latest(ckpt_dir), ckpt_dir + "/step-00000020");
  EXPECT_NE(expect_checkpoint_error([&] { load_checkpoint(s30); }).find("truncated"), std::string::npos);

  // Corrupt manifest.
  const std::string s20 = ckpt_dir + "/step-00000020";
  std::ofstream(s20 + "/state.json", std::ios::trunc) << "{\"format\": \"mlkv-checkpoint\", \"step\": ";
  EXPECT_EQ(*find_latest(ckpt_dir), ckpt_dir + "/step-00000010");
  EXPECT_NE(expect_checkpoint_error([&] { load_checkpoint(s20); }).find("corrupt manifest"), std::string::npos);

  // Same size, flipped bits: only the CRC can tell, and load checks it.
  const std::string s10 = ckpt_dir + "/step-00000010";
  {
    std::fstream f(s10 + "/optim.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-5, std::ios::end);
    f.put('\x7f');
  }
  EXPECT_NE(expect_checkpoint_error([&] { load_checkpoint(s10); }).find("CRC-32"), std::string::npos);
  // The weights alone are still intact and loadable.
  EXPECT_NO_THROW(load_checkpoint_weights(s10));

  // Nothing complete left after removing a file of the last one.
  fs::remove(s10 + "/config.toml");
  EXPECT_FALSE(find_latest(ckpt_dir).has_value());
  EXPECT_NE(expect_checkpoint_error([&] { load_checkpoint(ckpt_dir); }).find("no complete checkpoint"), std::string::npos);
  EXPECT_FALSE(find_latest(dir / "does-not-exist").has_value());
}

TEST_F(CheckpointTest, LatestNamesTheLiveTimeline) {
  // After a resume from an older checkpoint, `latest` wins over a higher-numbered leftover.
  save_checkpoint(ckpt_dir, random_checkpoint(cfg, 30, 1), 0);
  save_checkpoint(ckpt_dir, random_checkpoint(cfg, 10, 2), 0);
  EXPECT_EQ(*find_latest(ckpt_dir), ckpt_dir + "/step-00000010");
  // `latest` naming a removed directory: the newest complete one is taken instead.
  fs::remove_all(ckpt_dir + "/step-00000010");
  EXPECT_EQ(*find_latest(ckpt_dir), ckpt_dir + "/step-00000030");
  // Rewriting an existing step replaces it whole.
  const CheckpointData again = random_checkpoint(cfg, 30, 9);
  save_checkpoint(ckpt_dir, again, 0);
  EXPECT_EQ(load_checkpoint(ckpt_dir).master, again.master);
}

TEST_F(CheckpointTest, RefusesAnotherModelOrKvPlanWithTheReason) {
  const Config same = load_config(test::tiny_config(dir), {"optim.lr=1e-3", "train.steps=99"});
  EXPECT_NO_THROW(check_compatible(cfg, same, "ckpt"));  // training settings may change

  const Config other_plan = load_config(test::tiny_config(dir), {"kv.kv_layers=2", "kv.kv_heads=1"});
  const std::string why = expect_checkpoint_error([&] { check_compatible(cfg, other_plan, "runs/x/step-5"); });
  EXPECT_NE(why.find("runs/x/step-5"), std::string::npos) << why;
  EXPECT_NE(why.find("KV plan"), std::string::npos) << why;
  EXPECT_NE(why.find("owners 0,1"), std::string::npos) << why;

  const Config other_model = load_config(test::tiny_config(dir), {"model.d_model=64"});
  EXPECT_NE(expect_checkpoint_error([&] { check_compatible(cfg, other_model, "c"); }).find("model.d_model 32"),
            std::string::npos);

  // The tensors themselves are checked too: a renamed/reshaped file is refused on load.
  CheckpointData d = random_checkpoint(cfg, 1, 1);
  const std::string path = save_checkpoint(ckpt_dir, d, 0);
  Config wrong = cfg;
  wrong.model.d_model = 64;
  std::ofstream(path + "/config.toml", std::ios::trunc) << config_to_toml(wrong);
  EXPECT_NE(expect_checkpoint_error([&] { load_checkpoint(path); }).find("config.toml: CRC-32"), std::string::npos);
  // ... a manifest edited to agree with it fails its own CRC (state_crc32) ...
  auto manifest = nlohmann::ordered_json::parse(test::read_text(path + "/state.json"));
  manifest["files"]["config.toml"]["bytes"] = fs::file_size(path + "/config.toml");
  char crc[9];
  std::snprintf(crc, sizeof crc, "%08x", crc32_file(path + "/config.toml"));
  manifest["files"]["config.toml"]["crc32"] = crc;
  std::ofstream(path + "/state.json", std::ios::trunc) << manifest.dump(2);
  EXPECT_NE(expect_checkpoint_error([&] { load_checkpoint(path); }).find("state.json was changed"), std::string::npos);
  // ... as a version-1 manifest (no state_crc32) its model block contradicts config.toml ...
  manifest.erase("state_crc32");
  manifest["format_version"] = 1;
  std::ofstream(path + "/state.json", std::ios::trunc) << manifest.dump(2);
  const std::string contradiction = expect_checkpoint_error([&] { load_checkpoint(path); });
  EXPECT_NE(contradiction.find("describe different models"), std::string::npos) << contradiction;
  EXPECT_NE(contradiction.find("model.d_model 32 in state.json, 64 in config.toml"), std::string::npos) << contradiction;
  // ... and with the model block edited too, the tensor shapes give it away.
  const ModelSpec ws = wrong.spec();
  manifest["model"]["d_model"] = ws.d_model;
  manifest["model"]["ffn"] = ws.ffn;
  manifest["model"]["params"] = ParamLayout(ws).total_params();
  std::ofstream(path + "/state.json", std::ios::trunc) << manifest.dump(2);
  EXPECT_NE(expect_checkpoint_error([&] { load_checkpoint(path); }).find("has shape"), std::string::npos);
}

TEST_F(CheckpointTest, UnwritableDirectoryIsReportedUpFront) {
  std::ofstream(dir / "a-file") << "x";
  try {
    probe_writable_dir(dir / "a-file/ckpt", "checkpoint.dir");
    FAIL() << "a directory under a file was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("checkpoint.dir"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(probe_writable_dir(ckpt_dir, "checkpoint.dir"));
  EXPECT_TRUE(fs::is_empty(ckpt_dir));  // the probe leaves nothing behind
  if (::geteuid() != 0) {  // permissions do not bind root
    fs::permissions(ckpt_dir, fs::perms::owner_read | fs::perms::owner_exec);
    EXPECT_THROW(probe_writable_dir(ckpt_dir, "checkpoint.dir"), ConfigError);
    fs::permissions(ckpt_dir, fs::perms::owner_all);
  }
}

// Overwrites one byte of a file in place (same size: only a checksum can tell).
void flip_byte(const std::string& path, std::streamoff from_end) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(-from_end, std::ios::end);
  const char c = static_cast<char>(f.get());
  f.seekp(-from_end, std::ios::end);
  f.put(static_cast<char>(c ^ 0x20));
}

// Replaces the first `from` in a text file by `to` of the same length.
void edit_text(const std::string& path, const std::string& from, const std::string& to) {
  std::string text = test::read_text(path);
  const size_t at = text.find(from);
  ASSERT_NE(at, std::string::npos) << from;
  text.replace(at, from.size(), to);
  std::ofstream(path, std::ios::trunc | std::ios::binary) << text;
}

TEST_F(CheckpointTest, ResumeAutoTakesTheNewestWholeCheckpoint) {
  for (int64_t s : {10, 20, 30, 40}) save_checkpoint(ckpt_dir, random_checkpoint(cfg, s, s), 0);
  const std::string s10 = ckpt_dir + "/step-00000010", s20 = ckpt_dir + "/step-00000020",
                    s30 = ckpt_dir + "/step-00000030", s40 = ckpt_dir + "/step-00000040";
  // A flipped byte in the optimizer file of the newest: only its CRC tells, and the choice checks it.
  flip_byte(s40 + "/optim.safetensors", 5);
  EXPECT_EQ(*find_latest(ckpt_dir), s30);
  EXPECT_EQ(load_checkpoint(ckpt_dir).state.step, 30);
  // A changed value in state.json that still parses: its own CRC (state_crc32) tells.
  edit_text(s30 + "/state.json", "\"tokens_seen\": 30000", "\"tokens_seen\": 30001");
  EXPECT_EQ(*find_latest(ckpt_dir), s20);
  // A state.json that contradicts config.toml (a mixed-up copy), with a self-consistent CRC:
  // step-10's manifest in step-20 names step-10's file CRCs, so the files give it away too; the
  // model block of an edited one is checked against config.toml (RefusesAnotherModel... below).
  fs::copy_file(s10 + "/state.json", s20 + "/state.json", fs::copy_options::overwrite_existing);
  EXPECT_EQ(*find_latest(ckpt_dir), s10);
  const CheckpointData c = load_checkpoint(ckpt_dir);
  EXPECT_EQ(c.state.step, 10);
  EXPECT_EQ(c.dir, s10);

  // An explicit path to a damaged checkpoint is an error naming the file, never a fallback.
  const std::string why = expect_checkpoint_error([&] { load_checkpoint(s40); });
  EXPECT_NE(why.find(s40 + "/optim.safetensors: CRC-32"), std::string::npos) << why;
  EXPECT_NE(expect_checkpoint_error([&] { load_checkpoint(s30); }).find("state.json was changed"), std::string::npos);

  // None whole: the error lists every reason.
  flip_byte(s10 + "/model.safetensors", 9);
  EXPECT_FALSE(find_latest(ckpt_dir).has_value());
  const std::string none = expect_checkpoint_error([&] { load_checkpoint(ckpt_dir); });
  for (const std::string& d : {s10, s20, s30, s40}) EXPECT_NE(none.find(d), std::string::npos) << none;
}

// Resume tests run the real trainer on the tiny config with an in-memory learnable stream.
TrainerOptions resume_options(const test::TempDir& dir, const std::vector<std::string>& overrides = {}) {
  TrainerOptions o;
  o.config = load_config(test::tiny_config(dir), overrides);
  o.install_signal_handlers = false;
  o.make_source = [](const SourceSpec& s) { return make_repeating_source(128, 23, 5, s); };
  return o;
}

template <typename E>
std::string expect_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const E& e) {
    EXPECT_EQ(e.exit_code(), kExitBadInput);
    return e.what();
  }
  ADD_FAILURE() << "no error of the expected type";
  return "";
}

TEST_F(CheckpointTest, ResumeAutoNeverStartsOverOnDamagedCheckpoints) {
  TrainerOptions o = resume_options(dir, {"train.steps=10", "train.eval_interval=0"});
  ASSERT_EQ(train(o).exit_code, kExitOk);  // checkpoints at 5 and 10
  flip_byte(ckpt_dir + "/step-00000010/model.safetensors", 3);
  o.config.train.steps = 12;
  o.resume = "auto";
  const TrainResult r = train(o);  // falls back to step 5
  EXPECT_EQ(r.losses.size(), 7u);
  // Every checkpoint damaged: refused (exit 2), not a fresh start that would prune them.
  for (const std::string& d : checkpoint_dirs(ckpt_dir)) flip_byte(d + "/config.toml", 2);
  const std::string why = expect_error<CheckpointError>([&] { train(o); });
  EXPECT_NE(why.find("no complete checkpoint"), std::string::npos) << why;
  // An explicit --resume PATH to a damaged checkpoint: exit 2 naming the file.
  o.resume = checkpoint_dirs(ckpt_dir).front();
  EXPECT_NE(expect_error<CheckpointError>([&] { train(o); }).find("config.toml: CRC-32"), std::string::npos);
}

TEST_F(CheckpointTest, ResumeWithAnotherGlobalBatchIsRefusedUnlessAllowed) {
  // A dp 2 checkpoint (global batch 2 x 4 x 2 = 16) resumed on one rank with the same micro_batch
  // and grad_accum (global batch 8).
  CheckpointData d = random_checkpoint(cfg, 5, 1);
  d.state.dp = 2;
  d.state.global_batch = 16;
  d.state.sampler = {0, 80};
  d.state.consecutive_bad = 0;
  const std::string path = save_checkpoint(ckpt_dir, d, 0);
  TrainerOptions o = resume_options(dir, {"train.steps=6"});
  o.resume = path;
  const std::string why = expect_error<ConfigError>([&] { train(o); });
  EXPECT_NE(why.find("global batch of 16 sequences"), std::string::npos) << why;
  EXPECT_NE(why.find("this run's is 8"), std::string::npos) << why;
  EXPECT_NE(why.find("train.allow_batch_change"), std::string::npos) << why;
  // A checkpoint from before global_batch was recorded is judged by its config and dp.
  d.state.global_batch = 0;
  o.resume = save_checkpoint(ckpt_dir, d, 0);
  EXPECT_NE(expect_error<ConfigError>([&] { train(o); }).find("global batch of 16"), std::string::npos);
  // Asked for: it resumes (with a warning).
  o.config.train.allow_batch_change = true;
  EXPECT_EQ(train(o).step, 6);
}

TEST_F(CheckpointTest, AfterTooManyBadStepsResumeAutoStopsBeforeAnotherStep) {
  CheckpointData bad = random_checkpoint(cfg, 4, 3);
  save_checkpoint(ckpt_dir, random_checkpoint(cfg, 2, 2), 0);
  bad.state.consecutive_bad = cfg.train.max_bad_steps;  // what an exit 4 leaves
  save_checkpoint(ckpt_dir, bad, 2);
  TrainerOptions o = resume_options(dir);
  o.resume = "auto";
  const TrainResult r = train(o);
  EXPECT_EQ(r.exit_code, kExitBadSteps);
  EXPECT_TRUE(r.losses.empty()) << "no step was spent";
  EXPECT_EQ(checkpoint_dirs(ckpt_dir), (std::vector<std::string>{ckpt_dir + "/step-00000004", ckpt_dir + "/step-00000002"}))
      << "nothing written, nothing pruned";
  // Raising the limit is the way on.
  o.config.train.max_bad_steps = cfg.train.max_bad_steps + 5;
  o.config.train.steps = 6;
  EXPECT_EQ(train(o).losses.size(), 2u);
}

// A learnable stream whose `fail_at`-th batch (1-based) raises the DataError a damaged shard gives.
class FailingSource final : public TokenSource {
 public:
  FailingSource(const SourceSpec& s, int fail_at) : inner_(make_repeating_source(128, 23, 5, s)), fail_at_(fail_at) {}
  void next(std::vector<int32_t>& rows) override {
    if (++calls_ == fail_at_) throw DataError("shard-00003.h5: chunk 7 fails its CRC-32 (test)");
    inner_->next(rows);
  }
  data::SamplerState state() const override { return inner_->state(); }
  void restore(const data::SamplerState& s) override { inner_->restore(s); }

 private:
  std::unique_ptr<TokenSource> inner_;
  int fail_at_, calls_ = 0;
};

TEST_F(CheckpointTest, DataErrorMidRunCheckpointsTheStepsDoneFirst) {
  TrainerOptions o = resume_options(dir, {"train.steps=20", "train.eval_interval=0"});
  o.make_source = [](const SourceSpec& s) -> std::unique_ptr<TokenSource> {
    if (s.validation) return nullptr;
    return std::make_unique<FailingSource>(s, 8);
  };
  const std::string why = expect_error<DataError>([&] { train(o); });
  EXPECT_NE(why.find("shard-00003.h5"), std::string::npos) << why;
  const CheckpointData c = load_checkpoint(ckpt_dir);
  EXPECT_EQ(c.state.step, 7) << "the 2 steps after the interval checkpoint at 5 are kept";
  EXPECT_EQ(c.state.sampler.next_sample, 7u * 8u) << "the failed batch is read again on resume";
  // Once the data is fixed, --resume auto continues from there.
  TrainerOptions again = resume_options(dir, {"train.steps=20", "train.eval_interval=0"});
  again.resume = "auto";
  EXPECT_EQ(train(again).losses.size(), 13u);
}

TEST_F(CheckpointTest, FullLogDirStopsWithTheCheckpointAndWholeLines) {
  // metrics.jsonl on a device that is always full: every write fails with ENOSPC.
  fs::create_directories(dir / "log");
  fs::create_symlink("/dev/full", dir / "log/metrics.jsonl");
  TrainerOptions o = resume_options(dir, {"train.steps=20", "checkpoint.interval=0", "log.tensorboard=false"});
  const TrainResult r = train(o);
  EXPECT_EQ(r.exit_code, kExitFailure) << "a run whose metrics are lost must not look like success";
  EXPECT_EQ(r.step, 5) << "stopped at the first log line (log.interval = 5)";
  EXPECT_EQ(load_checkpoint(ckpt_dir).state.step, 5);
}

// mlkv-train under a file-size limit (ulimit -f, in KiB): writes past it fail with EFBIG (the
// trainer ignores SIGXFSZ). The tiny 1-layer model's checkpoint files stay under the limit.
int run_with_file_limit(const test::TempDir& dir, int kib, const std::vector<std::string>& sets, std::string& out) {
  std::string cmd = "ulimit -f " + std::to_string(kib) + " && exec " + test::bin("mlkv-train") + " " +
                    test::tiny_config(dir);
  for (const char* s :
       {"train.steps=2000", "model.layers=1", "model.d_model=16", "model.heads=2", "kv.kv_heads=1", "log.interval=1",
        "checkpoint.interval=0", "train.eval_interval=0", "train.micro_batch=1", "train.grad_accum=1"})
    cmd += std::string(" --set ") + s;
  for (const std::string& s : sets) cmd += " --set " + s;
  return test::run({"/bin/bash", "-c", cmd}, out);
}

TEST_F(CheckpointTest, FileSizeLimitInLogDirNeverCutsALineNorCostsTheCheckpoint) {
  if (!fs::exists(test::bin("mlkv-train"))) GTEST_SKIP() << "mlkv-train not built";
  test::make_tiny_data(dir);
  std::string out;
  // metrics.jsonl reaches the limit (TensorBoard off).
  EXPECT_EQ(run_with_file_limit(dir, 96, {"log.tensorboard=false"}, out), kExitFailure) << out;
  EXPECT_NE(out.find("metrics.jsonl: write failed"), std::string::npos) << out;
  const auto rows = test::metrics_rows(dir / "log/metrics.jsonl");  // throws on a cut line
  ASSERT_FALSE(rows.empty());
  const int64_t stopped = load_checkpoint(ckpt_dir).state.step;
  EXPECT_EQ(stopped, rows.back()["step"].get<int64_t>() + 1) << "checkpoint at the step whose line failed";

  // The TensorBoard file reaches it (metrics.jsonl on /dev/null, which has no size).
  fs::remove_all(dir / "log");
  fs::remove_all(ckpt_dir);
  fs::create_directories(dir / "log");
  fs::create_symlink("/dev/null", dir / "log/metrics.jsonl");
  EXPECT_EQ(run_with_file_limit(dir, 96, {"log.tensorboard=true"}, out), kExitFailure) << out;
  EXPECT_NE(out.find("TensorBoard"), std::string::npos) << out;
  EXPECT_GT(load_checkpoint(ckpt_dir).state.step, 0) << out;
}

TEST_F(CheckpointTest, RefusedRunCreatesNoOutputDirectories) {
  TrainerOptions o;
  o.config = load_config(test::tiny_config(dir), {"data.path=" + dir / "no-such-data"});
  o.install_signal_handlers = false;
  EXPECT_THROW(train(o), DataError);
  EXPECT_FALSE(fs::exists(ckpt_dir));
  EXPECT_FALSE(fs::exists(dir / "log"));
}

}  // namespace
}  // namespace mlkv
