// Token ids given on a command line ("12,345,6789"), as mlkv-generate --tokens and mlkv-eval
// --tokens take them: one parser, so both tools accept and refuse the same lists.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mlkv {

// Parses comma-separated decimal ids, each in [0, vocab). Strict: no spaces, signs, empty items
// (",," or a trailing comma) or empty lists, because a typo there would silently change the
// prompt. Throws ConfigError whose message starts with `what` (e.g. "--tokens") and names the
// offending item, its 0-based position and the valid range.
std::vector<int32_t> parse_token_ids(const std::string& list, int64_t vocab, const std::string& what);

}  // namespace mlkv
