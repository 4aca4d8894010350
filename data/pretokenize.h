// The GPT-2 / GPT-NeoX byte-level pre-tokenizer split, hand-written instead of a regex engine:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Alternatives are tried in order at each position, each greedy, exactly as the regex does.
#pragma once
#include <cstddef>
#include <utility>
#include <vector>

namespace mlkv::data {

// Splits code points into pre-tokens; returns [begin, end) code point index pairs.
void pretokenize(const std::vector<char32_t>& codes, std::vector<std::pair<size_t, size_t>>& out);

}  // namespace mlkv::data
