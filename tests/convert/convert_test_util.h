// Helpers for the converter tests: fixture loading, tolerance checks that report the worst element,
// scratch directories, and small TOML/HF-directory builders for bad-input cases.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/model_spec.h"
#include "core/safetensors.h"

namespace mlkv::test {

inline std::string fixture(const std::string& rel) { return std::string(MLKV_SOURCE_DIR) + "/tests/fixtures/" + rel; }
inline std::string conv_fixture(const std::string& rel) {
  return std::string(MLKV_SOURCE_DIR) + "/tests/convert/fixtures/" + rel;
}

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// The architecture a fixture's case.json describes (ffn = 4d as in every fixture).
inline ModelSpec spec_from_case(const nlohmann::json& c) {
  ModelSpec s;
  s.layers = c["layers"];
  s.d_model = c["d_model"];
  s.heads = c["heads"];
  s.vocab = c["vocab"];
  s.max_seq_len = 64;
  s.ffn = 4 * s.d_model;
  s.rotary_pct = c["rotary_pct"];
  s.rotary_base = c["rotary_base"];
  s.ln_eps = c["ln_eps"];
  s.kv = KvPlan::from_owners(s.layers, c["owners"].get<std::vector<int>>(), c["kv_heads"]);
  s.kv.rope_shared_keys = c["rope_shared_keys"];
  s.validate("case.json");
  return s;
}

// A fresh, empty directory under the build tree, unique per test.
inline std::string scratch_dir(const std::string& name) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string tag = std::string(info->test_suite_name()) + "." + info->name() + "." + name;
  for (char& ch : tag)
    if (ch == '/') ch = '_';
  const std::filesystem::path p = std::filesystem::path(MLKV_BINARY_DIR) / "test_scratch" / "convert" / tag;
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

// Runs one step of an end-to-end test through the shell, its output in DIR/step.log; on failure the
// test fails with the command and that output. Returns whether it succeeded.
inline bool shell_step(const std::string& dir, const std::string& cmd) {
  const int rc = std::system((cmd + " > " + dir + "/step.log 2>&1").c_str());
  EXPECT_EQ(rc, 0) << cmd << "\n" << read_text(dir + "/step.log");
  return rc == 0;
}

// A target TOML for an HF model: `model` holds the [model] keys; `extra` is appended verbatim.
inline std::string write_target_toml(const std::string& dir, const std::string& model, const std::string& extra = "") {
  const std::string path = dir + "/target.toml";
  write_text(path, "[model]\n" + model + "\n" + extra + "\n[train]\nsteps = 1\nseq_len = 8\n");
  return path;
}
// The hf_mha fixture's model section.
inline const char* kHfMhaModel = "layers = 2\nd_model = 32\nheads = 2\nvocab_size = 96\nmax_seq_len = 64";

// max|ours − ref| / max|ref| (NaN stays NaN).
inline double max_rel_error(const float* ours, const float* ref, size_t n) {
  double ref_max = 0, diff_max = 0;
  for (size_t i = 0; i < n; ++i) {
    ref_max = std::max(ref_max, std::abs(static_cast<double>(ref[i])));
    diff_max = std::max(diff_max, std::abs(static_cast<double>(ours[i]) - ref[i]));
  }
  return ref_max > 0 ? diff_max / ref_max : diff_max;
}

// max|a − b| / max|ref| ≤ max_rel and, element by element, |a − b| ≤ atol·max|ref| + rtol·|ref|.
// The failure message names the worst element.
inline ::testing::AssertionResult close_to(const float* ours, const float* ref, size_t n, double max_rel,
                                           double atol = 2e-5, double rtol = 1e-3) {
  double ref_max = 0, diff_max = 0;
  size_t worst = 0;
  for (size_t i = 0; i < n; ++i) {
    ref_max = std::max(ref_max, std::abs(static_cast<double>(ref[i])));
    const double d = std::abs(static_cast<double>(ours[i]) - ref[i]);
    if (!(d <= diff_max)) {  // NaN counts as worst
      diff_max = d;
      worst = i;
    }
  }
  const double rel = ref_max > 0 ? diff_max / ref_max : diff_max;
  if (!(rel <= max_rel))
    return ::testing::AssertionFailure() << "max relative error " << rel << " > " << max_rel << " (element " << worst
                                         << ": ours " << ours[worst] << ", reference " << ref[worst] << ")";
  for (size_t i = 0; i < n; ++i) {
    const double d = std::abs(static_cast<double>(ours[i]) - ref[i]);
    if (!(d <= atol * ref_max + rtol * std::abs(static_cast<double>(ref[i]))))
      return ::testing::AssertionFailure() << "element " << i << ": ours " << ours[i] << ", reference " << ref[i]
                                           << " (|diff| " << d << ")";
  }
  return ::testing::AssertionSuccess() << "max relative error " << rel;
}

inline ::testing::AssertionResult close_to(const std::vector<float>& ours, const std::vector<float>& ref, double max_rel,
                                           double atol = 2e-5, double rtol = 1e-3) {
  if (ours.size() != ref.size())
    return ::testing::AssertionFailure() << "sizes differ: " << ours.size() << " vs " << ref.size();
  return close_to(ours.data(), ref.data(), ours.size(), max_rel, atol, rtol);
}

// Expects `f` to throw E whose message contains every one of `parts`.
template <typename E, typename F>
::testing::AssertionResult throws_with(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts)
      if (msg.find(p) == std::string::npos)
        return ::testing::AssertionFailure() << "message lacks '" << p << "': " << msg;
    return ::testing::AssertionSuccess() << msg;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw another type: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

}  // namespace mlkv::test
