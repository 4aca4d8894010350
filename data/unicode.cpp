// UTF-8, character classes and NFC (UAX #15: decompose, reorder by combining class, compose).
#include "data/unicode.h"

#include <algorithm>

#include "data/unicode_tables.h"

namespace mlkv::data::unicode {

bool decode_utf8(std::string_view text, std::vector<char32_t>& out, size_t& bad_offset) {
  out.clear();
  out.reserve(text.size());
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  size_t i = 0, n = text.size();
  while (i < n) {
    unsigned char b = bytes[i];
    if (b < 0x80) {
      out.push_back(b);
      ++i;
      continue;
    }
    int extra;
    char32_t code, min_code;
    if ((b & 0xE0) == 0xC0) {
      extra = 1, code = b & 0x1F, min_code = 0x80;
    } else if ((b & 0xF0) == 0xE0) {
      extra = 2, code = b & 0x0F, min_code = 0x800;
    } else if ((b & 0xF8) == 0xF0) {
      extra = 3, code = b & 0x07, min_code = 0x10000;
    } else {
      bad_offset = i;
      return false;
    }
    for (int k = 1; k <= extra; ++k) {
      if (i + k >= n || (bytes[i + k] & 0xC0) != 0x80) {
        bad_offset = i;
        return false;
      }
      code = (code << 6) | (bytes[i + k] & 0x3F);
    }
    if (code < min_code || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) {
      bad_offset = i;
      return false;
    }
    out.push_back(code);
    i += static_cast<size_t>(extra) + 1;
  }
  return true;
}

void append_utf8(char32_t code, std::string& out) {
  if (code < 0x80) {
    out.push_back(static_cast<char>(code));
  } else if (code < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (code >> 6)));
    out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
  } else if (code < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (code >> 12)));
    out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (code >> 18)));
    out.push_back(static_cast<char>(0x80 | ((code >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
  }
}

std::string encode_utf8(const std::u32string_view codes) {
  std::string out;
  out.reserve(codes.size());
  for (char32_t c : codes) append_utf8(c, out);
  return out;
}

namespace {

bool in_ranges(const CodeRange* ranges, size_t count, char32_t code) {
  const CodeRange* end = ranges + count;
  const CodeRange* it = std::upper_bound(
      ranges, end, code, [](char32_t c, const CodeRange& r) { return c < r.first; });
  return it != ranges && code <= (it - 1)->last;
}

}  // namespace

bool is_letter(char32_t code) {
  if (code < 0x80) return (code | 0x20) >= 'a' && (code | 0x20) <= 'z';
  return in_ranges(kLetterRanges, kLetterRangeCount, code);
}

bool is_number(char32_t code) {
  if (code < 0x80) return code >= '0' && code <= '9';
  return in_ranges(kNumberRanges, kNumberRangeCount, code);
}

bool is_whitespace(char32_t code) {
  if (code < 0x80) return code == ' ' || (code >= 0x09 && code <= 0x0D);
  return code == 0x85 || code == 0xA0 || code == 0x1680 || (code >= 0x2000 && code <= 0x200A) ||
         code == 0x2028 || code == 0x2029 || code == 0x202F || code == 0x205F || code == 0x3000;
}

uint32_t combining_class(char32_t code) {
  if (code < 0x300) return 0;
  const ClassRange* begin = kCombiningClassRanges;
  const ClassRange* end = begin + kCombiningClassRangeCount;
  const ClassRange* it = std::upper_bound(
      begin, end, code, [](char32_t c, const ClassRange& r) { return c < r.first; });
  if (it == begin || code > (it - 1)->last) return 0;
  return (it - 1)->combining_class;
}

namespace {

// Hangul syllables decompose and compose algorithmically (Unicode §3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

void decompose(char32_t code, std::vector<char32_t>& out) {
  if (code >= kSBase && code < kSBase + kSCount) {
    char32_t index = code - kSBase;
    out.push_back(kLBase + index / kNCount);
    out.push_back(kVBase + (index % kNCount) / kTCount);
    if (index % kTCount != 0) out.push_back(kTBase + index % kTCount);
    return;
  }
  if (code >= 0xC0) {
    const Decomposition* begin = kDecompositions;
    const Decomposition* end = begin + kDecompositionCount;
    const Decomposition* it = std::lower_bound(
        begin, end, code, [](const Decomposition& d, char32_t c) { return d.code < c; });
    if (it != end && it->code == code) {
      decompose(it->first, out);
      if (it->second != 0) decompose(it->second, out);
      return;
    }
  }
  out.push_back(code);
}

char32_t compose_pair(char32_t first, char32_t second) {
  if (first >= kLBase && first < kLBase + kLCount && second >= kVBase &&
      second < kVBase + kVCount) {
    return kSBase + ((first - kLBase) * kVCount + (second - kVBase)) * kTCount;
  }
  if (first >= kSBase && first < kSBase + kSCount && (first - kSBase) % kTCount == 0 &&
      second > kTBase && second < kTBase + kTCount) {
    return first + (second - kTBase);
  }
  const Composition* begin = kCompositions;
  const Composition* end = begin + kCompositionCount;
  const Composition* it = std::lower_bound(
      begin, end, std::pair{first, second}, [](const Composition& c, std::pair<char32_t, char32_t> k) {
        return c.first < k.first || (c.first == k.first && c.second < k.second);
      });
  if (it != end && it->first == first && it->second == second) return it->composite;
  return 0;
}

}  // namespace

std::vector<char32_t> nfc(const std::vector<char32_t>& codes) {
  // Below U+0300 nothing decomposes into anything NFC would not recompose, and nothing combines.
  if (std::all_of(codes.begin(), codes.end(), [](char32_t c) { return c < 0x300; })) {
    return codes;
  }
  std::vector<char32_t> decomposed;
  decomposed.reserve(codes.size() + 8);
  for (char32_t c : codes) decompose(c, decomposed);
  // Canonical ordering: stable sort each run of non-starters by combining class.
  for (size_t i = 0; i < decomposed.size();) {
    if (combining_class(decomposed[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < decomposed.size() && combining_class(decomposed[j]) != 0) ++j;
    std::stable_sort(decomposed.begin() + static_cast<long>(i),
                     decomposed.begin() + static_cast<long>(j), [](char32_t a, char32_t b) {
                       return combining_class(a) < combining_class(b);
                     });
    i = j;
  }
  std::vector<char32_t> out;
  out.reserve(decomposed.size());
  long starter = -1;
  uint32_t last_class = 0;
  for (char32_t c : decomposed) {
    uint32_t cc = combining_class(c);
    if (starter >= 0) {
      bool adjacent = out.size() == static_cast<size_t>(starter) + 1;
      bool unblocked = adjacent || (last_class != 0 && last_class < cc);
      if (unblocked) {
        char32_t composite = compose_pair(out[static_cast<size_t>(starter)], c);
        if (composite != 0) {
          out[static_cast<size_t>(starter)] = composite;
          continue;
        }
      }
    }
    if (cc == 0) starter = static_cast<long>(out.size());
    out.push_back(c);
    last_class = cc;
  }
  return out;
}

}  // namespace mlkv::data::unicode
