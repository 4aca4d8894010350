// A guard between config text and TOML++ 3.3 (Debian 12), whose whitespace test has no answer for
// some non-ASCII code points: asked about U+00A1..U+0499, U+2C5E..U+3057 or U+FB26..U+FEFE it
// reaches __builtin_unreachable(), i.e. undefined behaviour (found by tests/fuzz/toml_fuzz.cpp;
// upstream tomlplusplus issue 295, whose fix answers "not whitespace"). It asks only where
// whitespace may stand, but which places those are is the parser's business, so the text it
// parses never holds those code points: each becomes the private-use code point U+F0000 + c (one
// character as well, so lines and columns in its errors stay right; never whitespace), and the
// strings it returns are mapped back.
#pragma once
#include <string>

namespace mlkv {

// `text` with every such code point replaced. Throws ConfigError (naming `source`, line and
// column) for a code point of U+F0000..U+FFFFF in `text`, which would be ambiguous on the way back.
std::string shield_for_toml(const std::string& text, const std::string& source);
// The inverse on text that came out of the parser (string values, error messages).
std::string unshield_from_toml(const std::string& text);

}  // namespace mlkv
