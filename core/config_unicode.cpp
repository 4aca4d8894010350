// The TOML++ 3.3 guard (see config_unicode.h): a UTF-8 scan that swaps code points both ways.
#include "core/config_unicode.h"

#include <cstdint>
#include <cstdio>

#include "core/errors.h"

namespace mlkv {
namespace {

constexpr char32_t kShift = 0xF0000;  // Supplementary Private Use Area-A

// TOML++ 3.3 looks non-ASCII code points up in blocks of 0x3FA from U+00A0; blocks 0, 11 and 63
// mix whitespace and other code points and have no case of their own: those are the ones.
bool toml_cannot_classify(char32_t c) {
  if (c <= 0xA0 || c >= 0xFEFF || c == 0x3000) return false;  // U+3000, U+FEFF: answered
  const uint32_t block = (c - 0xA0) / 0x3FA;
  return block == 0 || block == 11 || block == 63;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

// The well-formed UTF-8 sequence at text[at], as its code point and length; length 0 for
// anything else (malformed bytes pass through unchanged: the parser reports them).
char32_t decode_at(const std::string& text, size_t at, size_t& length) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char b = byte(at);
  length = b >= 0xF0 && b <= 0xF4 ? 4 : b >= 0xE0 ? 3 : b >= 0xC2 && b <= 0xDF ? 2 : 0;
  if (b >= 0xF5 || length == 0 || at + length > text.size()) return length = 0, 0;
  char32_t c = b & (0x7F >> length);
  for (size_t i = 1; i < length; ++i) {
    if ((byte(at + i) & 0xC0) != 0x80) return length = 0, 0;
    c = c << 6 | (byte(at + i) & 0x3F);
  }
  const char32_t smallest[] = {0, 0, 0x80, 0x800, 0x10000};
  if (c < smallest[length] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return length = 0, 0;
  return c;
}

// Copies `text`, passing every decoded non-ASCII code point through `map`.
template <class Map>
std::string remap(const std::string& text, Map&& map) {
  std::string out;
  out.reserve(text.size());
  for (size_t at = 0; at < text.size();) {
    size_t length = 0;
    const char32_t c = static_cast<unsigned char>(text[at]) < 0x80 ? 0 : decode_at(text, at, length);
    if (length == 0) {
      out += text[at++];
      continue;
    }
    append_utf8(out, map(c, at));
    at += length;
  }
  return out;
}

}  // namespace

std::string shield_for_toml(const std::string& text, const std::string& source) {
  return remap(text, [&](char32_t c, size_t at) {
    if (c >= kShift && c < kShift + 0x10000) {
      size_t line = 1, column = 1;
      for (size_t i = 0; i < at; ++i) {
        if (text[i] == '\n') line++, column = 1;
        else if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) column++;
      }
      char cp[16];
      std::snprintf(cp, sizeof cp, "U+%05X", static_cast<unsigned>(c));
      throw ConfigError(source + ":" + std::to_string(line) + ":" + std::to_string(column) + ": private-use character " +
                        cp + " is not accepted in a config");
    }
    return toml_cannot_classify(c) ? c + kShift : c;
  });
}

std::string unshield_from_toml(const std::string& text) {
  return remap(text, [](char32_t c, size_t) {
    return c >= kShift && c < kShift + 0x10000 && toml_cannot_classify(c - kShift) ? c - kShift : c;
  });
}

}  // namespace mlkv
