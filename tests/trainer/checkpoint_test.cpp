// Checkpoints: CRC-32 check values, a bit-exact save/load round trip, the directory layout and
// `latest`, retention, incomplete or damaged checkpoints never taken, foreign models refused with
// the reason, and unwritable directories reported before anything is written.
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
  // ... and with a manifest that agrees with the edited config, the tensor shapes give it away.
  auto manifest = nlohmann::json::parse(test::read_text(path + "/state.json"));
  manifest["files"]["config.toml"]["bytes"] = fs::file_size(path + "/config.toml");
  char crc[9];
  std::snprintf(crc, sizeof crc, "%08x", crc32_file(path + "/config.toml"));
  manifest["files"]["config.toml"]["crc32"] = crc;
  std::ofstream(path + "/state.json", std::ios::trunc) << manifest.dump();
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

}  // namespace
}  // namespace mlkv
