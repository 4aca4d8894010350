// mlkv-eval --choice's scorer (core/choice_task.h): the JSONL reader's errors, lm-eval's
// context/continuation split, acc vs length-normalised acc, left truncation, and the model-backed
// log-probability against an independent log-softmax of the model's logits.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/choice_task.h"
#include "core/errors.h"
#include "core/model.h"
#include "../core/test_util.h"

namespace mlkv {
namespace {

const std::string kTokenizer = std::string(MLKV_SOURCE_DIR) + "/data/tokenizer/gpt-neox-20b.json";

std::string write_file(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::temp_directory_path() / ("mlkv_choice_" + name);
  std::ofstream(path) << text;
  return path.string();
}

std::string error_of(const std::string& jsonl) {
  try {
    read_choice_jsonl(write_file("bad.jsonl", jsonl));
  } catch (const DataError& e) {
    return e.what();
  }
  return "no error";
}

TEST(ChoiceTask, ReadsItemsAndNamesTheLineOfEveryBadOne) {
  const auto items = read_choice_jsonl(write_file(
      "ok.jsonl", "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 1}\n\n"
                  "{\"context\": \"d\", \"choices\": [\"e\", \"f\", \"g\"], \"gold\": 0, \"extra\": 5}\n"));
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[0].choices[1], "c");
  EXPECT_EQ(items[0].gold, 1);
  EXPECT_EQ(items[1].choices.size(), 3u);
  const std::string good = "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 0}\n";
  EXPECT_NE(error_of(good + "{\"context\": \"a\", \"choices\": [\"b\"], \"gold\": 0}\n").find("bad.jsonl:2: \"choices\""), std::string::npos);
  EXPECT_NE(error_of(good + good + "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 2}\n").find(":3: \"gold\" = 2"), std::string::npos);
  EXPECT_NE(error_of("{\"context\": 1, \"choices\": [\"b\", \"c\"], \"gold\": 0}\n").find(":1: \"context\""), std::string::npos);
  EXPECT_NE(error_of("{\"context\": \"a\", \"choices\": [\"b\", 3], \"gold\": 0}\n").find(":1: \"choices\""), std::string::npos);
  EXPECT_NE(error_of("not json\n").find(":1: not a JSON object"), std::string::npos);
  EXPECT_NE(error_of("\n").find("no items"), std::string::npos);
}

TEST(ChoiceTask, SplitsContextAndContinuationAsLmEvalDoes) {
  const auto tok = data::BpeTokenizer::load(kTokenizer);
  ChoiceItem item{"Hello", {"world", "there"}, 0};
  const auto enc = encode_choices(item, tok);
  ASSERT_EQ(enc.size(), 2u);
  EXPECT_EQ(enc[0].context, (std::vector<int32_t>{12092}));     // "Hello"
  EXPECT_EQ(enc[0].continuation, (std::vector<int32_t>{1533}));  // " world"
  EXPECT_EQ(enc[1].continuation, tok.encode(" there"));
  // A context's trailing space moves to the continuation: the context tokens stay "Hello".
  item.context = "Hello ";
  const auto moved = encode_choices(item, tok);
  EXPECT_EQ(moved[0].context, (std::vector<int32_t>{12092}));
  std::vector<int32_t> whole = moved[0].context;
  whole.insert(whole.end(), moved[0].continuation.begin(), moved[0].continuation.end());
  EXPECT_EQ(whole, tok.encode("Hello  world"));
}

TEST(ChoiceTask, AccuracyAndLengthNormalisedAccuracyDiffer) {
  // A fake model whose log-probability is minus the number of scored tokens: raw sums prefer the
  // choice with fewer tokens, normalised sums the one with more characters per token.
  const auto tok = data::BpeTokenizer::load(kTokenizer);
  const std::vector<ChoiceItem> items = {{"The", {" a b c d", "x"}, 1},  // acc right, acc_norm wrong
                                         {"The", {"x", "yes sir"}, 0}};  // acc right, acc_norm wrong
  std::vector<std::vector<EncodedChoice>> enc;
  for (const auto& it : items) enc.push_back(encode_choices(it, tok));
  const SequenceLogProb count = [](const std::vector<int32_t>& seq, size_t first) {
    return -static_cast<double>(seq.size() - first);
  };
  const ChoiceScore s = score_choice_task(items, enc, count, 64);
  // Item 1: " a b c d" → 5 scored tokens for 8 characters (-0.625 per char), "x" → 1 for 1 (-1).
  ASSERT_EQ(enc[0][0].continuation.size(), 5u);  // "  a b c d": the two spaces are one token
  EXPECT_EQ(s.pred[0], 1);
  EXPECT_EQ(s.pred_norm[0], 0);
  // Item 2: "x" 1 token / 1 char, "yes sir" 2 tokens / 7 chars: raw picks 0, normalised picks 1.
  EXPECT_EQ(s.pred[1], 0);
  EXPECT_EQ(s.pred_norm[1], 1);
  EXPECT_DOUBLE_EQ(s.acc, 1.0);
  EXPECT_DOUBLE_EQ(s.acc_norm, 0.0);
  EXPECT_DOUBLE_EQ(s.logprob[1][1], -2.0);
}

TEST(ChoiceTask, TruncatesContextFromTheLeftAndRefusesLongContinuations) {
  const auto tok = data::BpeTokenizer::load(kTokenizer);
  const std::vector<ChoiceItem> items = {{"one two three four five six seven eight", {"nine", "ten"}, 0}};
  const std::vector<std::vector<EncodedChoice>> enc = {encode_choices(items[0], tok)};
  std::vector<std::vector<int32_t>> seen;
  const SequenceLogProb record = [&](const std::vector<int32_t>& seq, size_t first) {
    seen.push_back(seq);
    EXPECT_EQ(seq.size() - first, 1u);
    return 0.0;
  };
  score_choice_task(items, enc, record, 4);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].size(), 5u);  // 4 inputs + the last target
  EXPECT_EQ(seen[0].back(), enc[0][0].continuation.back());
  EXPECT_EQ(seen[0].front(), enc[0][0].context[enc[0][0].context.size() - 4]);
  const std::vector<ChoiceItem> long_items = {{"a", {"b c d e f g", "h"}, 0}};
  const std::vector<std::vector<EncodedChoice>> long_enc = {encode_choices(long_items[0], tok)};
  try {
    score_choice_task(long_items, long_enc, record, 3);
    FAIL() << "a continuation longer than the window was accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("choice item 1, choice 0"), std::string::npos) << e.what();
  }
}

TEST(ChoiceTask, ModelLogProbEqualsTheLogSoftmaxOfTheLogits) {
  // The scorer pads to the model's window and scores through the trainer's loss; the reference is a
  // log-softmax of forward_logits on the unpadded sequence, in double precision.
  const ModelSpec spec = test::tiny_spec(2, 32, 2, 1, {0}, 97);
  auto backend = make_backend("cpu", 1);
  const std::vector<int32_t> seq = test::random_tokens(11, spec.vocab, 7);
  const size_t first = 6;
  Model padded(spec, *backend, 1, 16);
  const std::vector<float> params = test::random_params(padded.layout(), 3);
  padded.set_master(params);
  const double got = model_logprob(padded)(seq, first);

  Model exact(spec, *backend, 1, static_cast<int>(seq.size()) - 1);
  exact.set_master(params);
  const std::vector<float> logits = exact.forward_logits(seq.data());
  double want = 0;
  for (size_t i = first; i < seq.size(); ++i) {
    const float* row = logits.data() + (i - 1) * static_cast<size_t>(spec.vocab);
    double mx = row[0], z = 0;
    for (int64_t v = 1; v < spec.vocab; ++v) mx = std::max(mx, static_cast<double>(row[v]));
    for (int64_t v = 0; v < spec.vocab; ++v) z += std::exp(row[v] - mx);
    want += row[seq[i]] - mx - std::log(z);
  }
  EXPECT_LT(want, -1.0);  // a random model: far from certain
  EXPECT_NEAR(got, want, 1e-4 * std::abs(want));
  EXPECT_THROW(model_logprob(padded)(test::random_tokens(18, spec.vocab, 1), 5), Error);  // past the window
}

}  // namespace
}  // namespace mlkv
