// BpeTokenizer::decode: ids → text for the bundled GPT-NeoX tokenizer (the text mlkv-generate
// prints). The golden round trip over HF's ids lives in tests/data/tokenizer_test.cpp.
#include <gtest/gtest.h>

#include "core/errors.h"
#include "data/bpe_tokenizer.h"

namespace mlkv::data {
namespace {

const BpeTokenizer& neox() {
  static const BpeTokenizer t = BpeTokenizer::load(std::string(MLKV_SOURCE_DIR) + "/data/tokenizer/gpt-neox-20b.json");
  return t;
}

TEST(TokenizerDecode, KnownIds) {
  EXPECT_EQ(neox().decode(std::vector<int32_t>{12092, 1533}), "Hello world");
  EXPECT_EQ(neox().decode(std::vector<int32_t>{253}), " the");
  EXPECT_EQ(neox().decode(std::vector<int32_t>{0}), "<|endoftext|>");
  EXPECT_EQ(neox().decode(std::vector<int32_t>{}), "");
}

TEST(TokenizerDecode, RoundTripsBytesSplitAcrossTokens) {
  for (const std::string text : {"caf\xc3\xa9 \xe2\x82\xac 5 \xf0\x9f\x98\x80 emoji", "  two  spaces\n\nnewlines\t",
                                  "<|endoftext|>after the end", "x = [1, 2, 3]  # code"}) {
    const std::vector<int32_t> ids = neox().encode(text);
    EXPECT_EQ(neox().decode(ids), text);
    // one token at a time, concatenated: the same bytes (a character may span tokens)
    std::string pieces;
    for (int32_t id : ids) pieces += neox().decode(std::vector<int32_t>{id});
    EXPECT_EQ(pieces, text);
  }
}

TEST(TokenizerDecode, UnknownIdIsADataError) {
  EXPECT_THROW(neox().decode(std::vector<int32_t>{12092, 50277}), DataError);
  EXPECT_THROW(neox().decode(std::vector<int32_t>{-1}), DataError);
}

}  // namespace
}  // namespace mlkv::data
