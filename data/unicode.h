// Unicode helpers for the tokenizer: UTF-8 decoding with validation, the character classes
// of the GPT-2/NeoX pre-tokenizer regex (\p{L}, \p{N}, \s), and NFC normalization.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mlkv::data::unicode {

// Decodes UTF-8. Returns false and sets `bad_offset` (byte offset of the first invalid
// sequence) on malformed input, overlongs, surrogates or code points above U+10FFFF.
bool decode_utf8(std::string_view text, std::vector<char32_t>& out, size_t& bad_offset);
void append_utf8(char32_t code, std::string& out);
std::string encode_utf8(const std::u32string_view codes);

bool is_letter(char32_t code);      // general category L*
bool is_number(char32_t code);      // general category N*
bool is_whitespace(char32_t code);  // White_Space, as Oniguruma's \s matches it
uint32_t combining_class(char32_t code);

// Canonical composition (NFC) of a code point sequence.
std::vector<char32_t> nfc(const std::vector<char32_t>& codes);

}  // namespace mlkv::data::unicode
