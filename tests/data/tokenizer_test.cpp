// GPT-NeoX byte-level BPE: golden ids made by HF `tokenizers` (fixture script
// tests/data/fixtures/make_tokenizer_golden.py) including held-out text, plus unit checks of
// the pre-tokenizer split, NFC, decoding and error reporting.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "data/bpe_tokenizer.h"
#include "data/pretokenize.h"
#include "data/unicode.h"
#include "tests/data/data_test_util.h"

namespace mlkv::data {
namespace {

const std::string kTokenizerPath = std::string(MLKV_SOURCE_DIR) + "/data/tokenizer/gpt-neox-20b.json";

const BpeTokenizer& neox() {
  static const BpeTokenizer tokenizer = BpeTokenizer::load(kTokenizerPath);
  return tokenizer;
}

TEST(Tokenizer, PythiaFacts) {
  const BpeTokenizer& tok = neox();
  EXPECT_EQ(tok.vocab_size(), 50277);
  EXPECT_EQ(tok.token_id("<|endoftext|>"), 0);
  EXPECT_EQ(tok.token_id("<|padding|>"), 1);
  EXPECT_EQ(tok.encode("Hello world"), (std::vector<int32_t>{12092, 1533}));
  EXPECT_EQ(tok.encode(" the"), (std::vector<int32_t>{253}));
}

TEST(Tokenizer, GoldenIdsFromHfTokenizers) {
  std::ifstream in(std::string(MLKV_SOURCE_DIR) + "/tests/data/fixtures/tokenizer_golden.jsonl");
  ASSERT_TRUE(in) << "missing fixture";
  std::string line;
  std::map<std::string, int> checked;
  int64_t tokens = 0;
  while (std::getline(in, line)) {
    auto record = nlohmann::json::parse(line);
    const std::string text = record["text"];
    const auto expected = record["ids"].get<std::vector<int32_t>>();
    auto got = neox().encode(text);
    EXPECT_EQ(got, expected) << "group " << record["group"] << " text: " << text.substr(0, 120);
    checked[record["group"]]++;
    tokens += static_cast<int64_t>(expected.size());
    // Byte-level BPE is lossless up to the NFC normalization.
    std::vector<char32_t> codes;
    size_t bad = 0;
    ASSERT_TRUE(unicode::decode_utf8(text, codes, bad));
    auto normalized = unicode::nfc(codes);
    EXPECT_EQ(neox().decode(got),
              unicode::encode_utf8(std::u32string_view(normalized.data(), normalized.size())));
  }
  EXPECT_GE(checked["edge"], 30);
  EXPECT_GE(checked["random"], 200);
  EXPECT_GE(checked["held_out"], 4);
  EXPECT_GT(tokens, 5000);
}

std::vector<std::string> split(const std::u32string& text) {
  std::vector<char32_t> codes(text.begin(), text.end());
  std::vector<std::pair<size_t, size_t>> ranges;
  pretokenize(codes, ranges);
  std::vector<std::string> pieces;
  for (auto [b, e] : ranges) pieces.push_back(unicode::encode_utf8(std::u32string_view(text).substr(b, e - b)));
  return pieces;
}

TEST(Pretokenize, Gpt2RegexAlternatives) {
  using V = std::vector<std::string>;
  EXPECT_EQ(split(U"I'm here"), (V{"I", "'m", " here"}));
  EXPECT_EQ(split(U"'sam"), (V{"'s", "am"}));
  EXPECT_EQ(split(U"a  b"), (V{"a", " ", " b"}));
  EXPECT_EQ(split(U"a\n\n\nc"), (V{"a", "\n\n", "\n", "c"}));
  EXPECT_EQ(split(U"x\n"), (V{"x", "\n"}));
  EXPECT_EQ(split(U"ab12 34!?  "), (V{"ab", "12", " 34", "!?", "  "}));
  EXPECT_EQ(split(U" !'s"), (V{" !'", "s"}));
  EXPECT_EQ(split(U"\u00e9t\u00e9 \u0661\u0662"), (V{"\u00e9t\u00e9", " \u0661\u0662"}));
}

TEST(Unicode, NfcComposesAndReorders) {
  auto nfc = [](std::u32string s) {
    auto out = unicode::nfc(std::vector<char32_t>(s.begin(), s.end()));
    return std::u32string(out.begin(), out.end());
  };
  EXPECT_EQ(nfc(U"e\u0301"), U"\u00e9");
  EXPECT_EQ(nfc(U"\u212b"), U"\u00c5");               // singleton decomposition
  EXPECT_EQ(nfc(U"a\u0301\u0327"), U"\u00e1\u0327");  // reordered (202 < 230), then composed
  EXPECT_EQ(nfc(U"\u1100\u1161\u11a8"), U"\uac01");    // Hangul LVT
  EXPECT_EQ(nfc(U"\u0958"), U"\u0915\u093c");          // composition exclusion stays apart
  EXPECT_EQ(nfc(U"plain ascii"), U"plain ascii");
}

TEST(Unicode, ClassesMatchTheRegex) {
  EXPECT_TRUE(unicode::is_letter(U'\u00e9'));
  EXPECT_TRUE(unicode::is_letter(U'\u4e2d'));
  EXPECT_FALSE(unicode::is_letter(U'\u0301'));
  EXPECT_TRUE(unicode::is_number(U'\u0663'));
  EXPECT_TRUE(unicode::is_number(U'\u00bd'));
  EXPECT_TRUE(unicode::is_whitespace(U'\u3000'));
  EXPECT_TRUE(unicode::is_whitespace(U'\u0085'));
  EXPECT_FALSE(unicode::is_whitespace(U'\u001c'));  // Python's isspace says yes; \s says no
  EXPECT_FALSE(unicode::is_whitespace(U'\u200b'));
}

TEST(Tokenizer, InvalidUtf8NamesOffset) {
  test::expect_data_error([] { neox().encode(std::string("ab\xc3(", 4)); },
                          {"invalid UTF-8", "byte offset 2"});
  test::expect_data_error([] { neox().encode(std::string("\xed\xa0\x80", 3)); },  // surrogate
                          {"invalid UTF-8", "byte offset 0"});
}

TEST(Tokenizer, RefusesWhatItCannotReproduce) {
  test::ScratchDir dir;
  auto write = [&](const std::string& name, const std::string& text) {
    test::write_bytes(dir / name, std::vector<uint8_t>(text.begin(), text.end()));
    return dir / name;
  };
  test::expect_data_error([&] { BpeTokenizer::load(dir / "none.json"); }, {"none.json", "cannot open"});
  test::expect_data_error([&] { BpeTokenizer::load(write("bad.json", "{")); }, {"bad.json", "not valid JSON"});
  test::expect_data_error(
      [&] {
        BpeTokenizer::load(write("wp.json", R"({"model": {"type": "WordPiece", "vocab": {}}})"));
      },
      {"wp.json", "model.type must be BPE"});
  test::expect_data_error(
      [&] {
        BpeTokenizer::load(write("nfkc.json", R"({"normalizer": {"type": "NFKC"},
          "pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {}, "merges": []}})"));
      },
      {"nfkc.json", "normalizer", "NFKC"});
}

}  // namespace
}  // namespace mlkv::data
