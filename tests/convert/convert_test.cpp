// The MHA → MLKV conversion arithmetic (DESIGN §3) against hand-computed values: head pooling, the
// three group merges on uneven groups, the MLP widening (which must leave the function unchanged),
// the paper's widened width, and the conversions the converter must refuse.
#include <gtest/gtest.h>

#include "../core/test_util.h"
#include "convert_test_util.h"
#include "core/convert.h"
#include "core/errors.h"
#include "core/model.h"

namespace mlkv {
namespace {

using convert::Merge;

TEST(ConvertArithmetic, PoolHeadsAveragesContiguousGroups) {
  const std::vector<float> in{1, 2, 3, 4, 5, 6, 7, 8};  // 4 heads of 2
  std::vector<float> out(4);
  convert::pool_heads(out.data(), in.data(), 4, 2, 2);
  EXPECT_EQ(out, (std::vector<float>{2, 3, 6, 7}));
  std::vector<float> one(2);
  convert::pool_heads(one.data(), in.data(), 4, 1, 2);
  EXPECT_EQ(one, (std::vector<float>{4, 5}));
  std::vector<float> same(8);
  convert::pool_heads(same.data(), in.data(), 4, 4, 2);
  EXPECT_EQ(same, in);
}

TEST(ConvertArithmetic, GroupCombinerModes) {
  const float x0[2] = {0, 4}, x1[2] = {2, 8}, x2[2] = {4, 0};
  auto run = [&](Merge m) {
    convert::GroupCombiner c(m, 2);
    c.add(x0), c.add(x1), c.add(x2);
    std::vector<float> out(2);
    c.result(out.data());
    return out;
  };
  EXPECT_EQ(run(Merge::mean), (std::vector<float>{2, 4}));
  EXPECT_EQ(run(Merge::paper), (std::vector<float>{2.5f, 3}));  // ((x0 + x1)/2 + x2)/2
  EXPECT_EQ(run(Merge::owner), (std::vector<float>{0, 4}));
  EXPECT_EQ(convert::parse_merge("paper"), Merge::paper);
  EXPECT_THROW(convert::parse_merge("max"), ConfigError);
}

ModelSpec mha_spec(int layers, int d, int heads, int ffn) {
  ModelSpec s = test::tiny_spec(layers, d, heads, heads, [&] {
    std::vector<int> o(layers);
    for (int l = 0; l < layers; ++l) o[l] = l;
    return o;
  }(), 29);
  s.ffn = ffn;
  return s;
}

ModelSpec with_plan(ModelSpec s, std::vector<int> owners, int kv_heads) {
  s.kv = KvPlan::from_owners(s.layers, owners, kv_heads);
  s.validate("test");
  return s;
}

// The expected owner K (part 1) or V (part 2) rows, computed straight from the definition: pool
// heads g·k … g·k+k−1 of every layer in the group, then weight the layers (mean: 1/n each; paper:
// the owner 1/2^(n−1), the i-th later layer 1/2^(n−i); owner: the owner alone).
std::vector<double> expected_kv(const std::vector<float>& src, const ParamLayout& sl, const ModelSpec& s, int owner,
                                int top, int kv_t, Merge m, int part, bool bias) {
  const int hd = s.head_dim(), H = s.heads, k = H / kv_t, n = top - owner + 1;
  const int64_t cols = bias ? 1 : s.d_model;
  std::vector<double> out(static_cast<size_t>(int64_t{kv_t} * hd * cols), 0.0);
  for (int i = 0; i < n; ++i) {
    const double w = m == Merge::mean ? 1.0 / n
                     : m == Merge::owner ? (i == 0 ? 1.0 : 0.0)
                                         : std::ldexp(1.0, -(i == 0 ? n - 1 : n - i));
    const ParamView& v = sl.at("layers." + std::to_string(owner + i) + ".attn.qkv" + (bias ? ".bias" : ".weight"));
    for (int g = 0; g < kv_t; ++g)
      for (int e = 0; e < hd; ++e)
        for (int64_t c = 0; c < cols; ++c) {
          double pooled = 0;
          for (int h = g * k; h < (g + 1) * k; ++h) pooled += src[v.offset + ((int64_t{part} * H + h) * hd + e) * cols + c];
          out[(int64_t{g} * hd + e) * cols + c] += w * pooled / k;
        }
  }
  return out;
}

TEST(Converter, MatchesHandComputedPoolingAndMergingOnUnevenGroups) {
  const ModelSpec src_spec = mha_spec(5, 32, 4, 128);  // hd 8
  const ParamLayout sl(src_spec);
  const std::vector<float> src = test::random_params(sl, 3);
  const convert::BufferSource source(src_spec, src.data());
  struct Plan {
    std::vector<int> owners;
    int kv;
  };
  for (const Plan& p : {Plan{{0, 1, 3}, 2}, Plan{{0, 2}, 1}, Plan{{0}, 4}, Plan{{0, 1, 2, 3, 4}, 1}}) {
    for (Merge m : {Merge::mean, Merge::paper, Merge::owner}) {
      const ModelSpec t = with_plan(src_spec, p.owners, p.kv);
      const convert::Converter conv(source, t, m);
      const std::vector<float> out = conv.materialize();
      const ParamLayout& tl = conv.layout();
      const int hd = t.head_dim(), H = t.heads;
      for (int l = 0; l < t.layers; ++l) {
        for (bool bias : {false, true}) {
          const int64_t cols = bias ? 1 : t.d_model;
          const std::string name = "layers." + std::to_string(l) + ".attn.qkv" + (bias ? ".bias" : ".weight");
          const ParamView& tv = tl.at(name);
          const ParamView& sv = sl.at(name);
          for (int64_t i = 0; i < int64_t{H} * hd * cols; ++i)  // queries carry over exactly
            ASSERT_EQ(out[tv.offset + i], src[sv.offset + i]) << name;
          if (!t.kv.is_owner(l)) {
            ASSERT_EQ(tv.numel, int64_t{H} * hd * cols) << name;
            continue;
          }
          for (int part : {1, 2}) {
            const auto want = expected_kv(src, sl, src_spec, l, t.kv.group_top(l), p.kv, m, part, bias);
            const int64_t base = (int64_t{H} + int64_t{part - 1} * p.kv) * hd * cols;
            for (size_t i = 0; i < want.size(); ++i)
              ASSERT_NEAR(out[tv.offset + base + i], want[i], 1e-6) << convert::merge_name(m) << " " << name << " part "
                                                                    << part << " elem " << i;
          }
        }
      }
      for (const ParamView& v : tl.views()) {  // everything else is untouched
        if (v.name.find("attn.qkv") != std::string::npos) continue;
        const ParamView& sv = sl.at(v.name);
        ASSERT_TRUE(std::equal(out.begin() + v.offset, out.begin() + v.offset + v.numel, src.begin() + sv.offset)) << v.name;
      }
    }
  }
}

TEST(Converter, PoolingAGqaSourceAgainIsNested) {
  // GQA-2 → MQA pools the pooled heads: the same as pooling MHA straight to 1 head.
  const ModelSpec mha = mha_spec(2, 32, 4, 128);
  const std::vector<float> src = test::random_params(ParamLayout(mha), 5);
  const convert::BufferSource s0(mha, src.data());
  const convert::Converter to_gqa(s0, with_plan(mha, {0, 1}, 2), Merge::mean);
  const std::vector<float> gqa = to_gqa.materialize();
  const convert::BufferSource s1(to_gqa.target(), gqa.data());
  const std::vector<float> a = convert::Converter(s1, with_plan(mha, {0}, 1), Merge::mean).materialize();
  const std::vector<float> b = convert::Converter(s0, with_plan(mha, {0}, 1), Merge::mean).materialize();
  EXPECT_TRUE(test::close_to(a, b, 1e-6));
}

TEST(Widening, CopiesAndSplitsHandChecked) {
  // 3 neurons widened to 8: neurons 3,4,5 copy 0,1,2; 6,7 copy 0,1 again.
  EXPECT_EQ(convert::widen_source_neuron(5, 3), 2);
  EXPECT_EQ(convert::widen_source_neuron(7, 3), 1);
  EXPECT_EQ(convert::widen_copies(0, 3, 8), 3);
  EXPECT_EQ(convert::widen_copies(1, 3, 8), 3);
  EXPECT_EQ(convert::widen_copies(2, 3, 8), 2);
  EXPECT_EQ(convert::widen_copies(2, 3, 3), 1);
  const std::vector<float> up{10, 11, 20, 21, 30, 31};  // [3, 2]
  std::vector<float> wup(16);
  convert::widen_up_rows(wup.data(), up.data(), 3, 8, 2);
  EXPECT_EQ(wup, (std::vector<float>{10, 11, 20, 21, 30, 31, 10, 11, 20, 21, 30, 31, 10, 11, 20, 21}));
  const std::vector<float> down{3, 6, 8, 30, 60, 80};  // [2, 3]
  std::vector<float> wd(16);
  convert::widen_down_cols(wd.data(), down.data(), 2, 3, 8);
  EXPECT_EQ(wd, (std::vector<float>{1, 2, 4, 1, 2, 4, 1, 2, 10, 20, 40, 10, 20, 40, 10, 20}));
}

TEST(Widening, PreservesTheFunction) {
  const ModelSpec mha = mha_spec(3, 32, 4, 128);
  const std::vector<float> src = test::random_params(ParamLayout(mha), 9);
  const convert::BufferSource source(mha, src.data());
  const int B = 2, T = 7;
  const auto tokens = test::random_tokens(B * T, mha.vocab, 4);
  auto be = make_backend("cpu", 2);
  auto logits_of = [&](const ModelSpec& spec, const std::vector<float>& p) {
    Model m(spec, *be, B, T);
    m.set_master(p);
    return m.forward_logits(tokens.data());
  };
  const std::vector<float> before = logits_of(mha, src);
  for (int ffn : {128 + 5, 256, 128 * 3 + 7}) {  // some neurons copied once, twice and three times
    ModelSpec wide = mha;
    wide.ffn = ffn;
    const convert::Converter conv(source, wide, Merge::mean);
    const std::vector<float> after = logits_of(wide, conv.materialize());
    EXPECT_TRUE(test::close_to(after, before, 2e-6, 1e-6, 1e-5)) << "ffn " << ffn;
  }
  // The paper's own widening copies neurons without splitting their down columns, which changes the
  // function: the check above notices it.
  ModelSpec wide = mha;
  wide.ffn = 256;
  std::vector<float> bad = convert::Converter(source, wide, Merge::mean).materialize();
  const ParamLayout wl(wide), ml(mha);
  for (int l = 0; l < 3; ++l) {
    const std::string name = "layers." + std::to_string(l) + ".mlp.down.weight";
    const ParamView &v = wl.at(name), &sv = ml.at(name);
    for (int r = 0; r < mha.d_model; ++r)
      for (int j = 0; j < wide.ffn; ++j)
        bad[v.offset + r * wide.ffn + j] = src[sv.offset + r * mha.ffn + convert::widen_source_neuron(j, mha.ffn)];
  }
  EXPECT_FALSE(test::close_to(logits_of(wide, bad), before, 1e-4));
}

TEST(Widening, PaperWidthForPythia160m) {
  ModelSpec s = mha_spec(12, 768, 12, 3072);
  // MLKV-12 (4 x 3): 132 heads lost · (2·768·64 + 2·64) / 12 layers / 768 → round(1409.8) = 1410, halved = 705.
  EXPECT_EQ(convert::paper_widened_ffn(s, KvPlan::from_kv_layers(12, 4, 3)), 3072 + 705);
  // MLKV-1: 143 heads → 143·98432/12 = 1172984 / 768 = 1527.3 → 1527 → 763.
  EXPECT_EQ(convert::paper_widened_ffn(s, KvPlan::from_kv_layers(12, 1, 1)), 3072 + 763);
  EXPECT_EQ(convert::paper_widened_ffn(s, s.kv), 3072);
}

TEST(Converter, RefusesWhatItCannotDo) {
  const ModelSpec mha = mha_spec(4, 32, 4, 128);
  const std::vector<float> src = test::random_params(ParamLayout(mha), 1);
  const convert::BufferSource s0(mha, src.data());
  const ModelSpec gqa = with_plan(mha, {0, 2}, 2);
  const std::vector<float> g = convert::Converter(s0, gqa, Merge::mean).materialize();
  const convert::BufferSource s1(gqa, g.data());
  EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::Converter c(s1, with_plan(mha, {0, 2}, 4), Merge::mean); },
                                             {"kv_heads = 4", "does not divide", "2"}));
  EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::Converter c(s1, with_plan(mha, {0, 1}, 2), Merge::mean); },
                                             {"KV layer 1", "no K/V projection"}));
  ModelSpec narrow = mha;
  narrow.ffn = 64;
  EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::Converter c(s0, narrow, Merge::mean); }, {"narrower"}));
  ModelSpec flipped = gqa;
  flipped.kv.rope_shared_keys = false;
  EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::Converter c(s1, flipped, Merge::mean); }, {"rope_shared_keys"}));
  ModelSpec deeper = mha_spec(5, 32, 4, 128);
  EXPECT_TRUE(test::throws_with<ConfigError>([&] { convert::Converter c(s0, deeper, Merge::mean); }, {"layers"}));
}

}  // namespace
}  // namespace mlkv
