// parse_token_ids (core/token_ids.h), the --tokens parser of mlkv-generate and mlkv-eval: good
// lists parse, and every bad one is refused with a message naming the offending item.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/errors.h"
#include "core/token_ids.h"

namespace mlkv {
namespace {

// The message of the ConfigError that parsing `list` throws; "" when it parses.
std::string refusal(const std::string& list, int64_t vocab = 100) {
  try {
    (void)parse_token_ids(list, vocab, "--tokens");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(TokenIds, ParsesCommaSeparatedIds) {
  EXPECT_EQ(parse_token_ids("12,0,99,7", 100, "--tokens"), (std::vector<int32_t>{12, 0, 99, 7}));
  EXPECT_EQ(parse_token_ids("5", 6, "--tokens"), (std::vector<int32_t>{5}));
  EXPECT_EQ(parse_token_ids("50303", 50304, "--tokens"), (std::vector<int32_t>{50303}));
}

TEST(TokenIds, BadItemsAreNamedWithTheirPositionAndTheRange) {
  struct Case {
    std::string list, item;
    int position;
  };
  const std::vector<Case> cases{
      {"1,2,x", "x", 2},       {"1,,3", "", 1},         {"1,2,", "", 2},       {",1", "", 0},
      {"1,-4", "-4", 1},       {"100", "100", 0},       {"7, 8", " 8", 1},     {"+3", "+3", 0},
      {"3.5", "3.5", 0},       {"12abc", "12abc", 0},   {"99999999999999999999999", "99999999999999999999999", 0},
  };
  for (const Case& c : cases) {
    const std::string why = refusal(c.list);
    EXPECT_NE(why.find("--tokens: item " + std::to_string(c.position) + " \"" + c.item + "\""), std::string::npos)
        << c.list << ": " << why;
    EXPECT_NE(why.find("[0, 100)"), std::string::npos) << c.list << ": " << why;
  }
}

TEST(TokenIds, EmptyListIsRefused) {
  EXPECT_NE(refusal("").find("--tokens: no token ids given"), std::string::npos) << refusal("");
}

TEST(TokenIds, RefusalIsABadInputExit) {
  try {
    (void)parse_token_ids("1,oops", 10, "--tokens");
    FAIL() << "parsed a bad list";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), kExitBadInput);
  }
}

}  // namespace
}  // namespace mlkv
