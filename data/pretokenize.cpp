// GPT-2 pre-tokenizer regex as a small scanner (see pretokenize.h for the pattern).
#include "data/pretokenize.h"

#include "data/unicode.h"

namespace mlkv::data {

namespace {

using unicode::is_letter;
using unicode::is_number;
using unicode::is_whitespace;

bool is_other(char32_t c) { return !is_whitespace(c) && !is_letter(c) && !is_number(c); }

// Length of the contraction at i ('s 't 're 've 'm 'll 'd, case-sensitive), or 0.
size_t contraction(const std::vector<char32_t>& s, size_t i) {
  if (s[i] != U'\'' || i + 1 >= s.size()) return 0;
  char32_t a = s[i + 1];
  if (a == U's' || a == U't' || a == U'm' || a == U'd') return 2;
  if (i + 2 < s.size()) {
    char32_t b = s[i + 2];
    if ((a == U'r' && b == U'e') || (a == U'v' && b == U'e') || (a == U'l' && b == U'l')) return 3;
  }
  return 0;
}

// ` ?X+` for a class X: length of the match at i, or 0.
template <typename Class>
size_t optional_space_run(const std::vector<char32_t>& s, size_t i, Class in_class) {
  size_t j = i;
  if (s[j] == U' ') ++j;
  if (j >= s.size() || !in_class(s[j])) return 0;
  while (j < s.size() && in_class(s[j])) ++j;
  return j - i;
}

}  // namespace

void pretokenize(const std::vector<char32_t>& s, std::vector<std::pair<size_t, size_t>>& out) {
  out.clear();
  size_t i = 0;
  while (i < s.size()) {
    size_t n = contraction(s, i);
    if (n == 0) n = optional_space_run(s, i, is_letter);
    if (n == 0) n = optional_space_run(s, i, is_number);
    if (n == 0) n = optional_space_run(s, i, is_other);
    if (n == 0) {
      // Here s[i] is whitespace. `\s+(?!\S)`: the whole run if it reaches the end or is followed
      // by more whitespace (impossible: the run is maximal), else the run minus its last char;
      // when that is empty, `\s+` takes the single char.
      size_t j = i;
      while (j < s.size() && is_whitespace(s[j])) ++j;
      n = j - i;
      if (j < s.size() && n > 1) --n;
    }
    out.emplace_back(i, i + n);
    i += n;
  }
}

}  // namespace mlkv::data
