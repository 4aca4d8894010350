// The guard in front of TOML++ 3.3 (core/config_unicode.h): the code points its whitespace test
// cannot classify reach the parser swapped, and come back unchanged in string values and errors.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "core/config.h"
#include "core/config_unicode.h"
#include "core/errors.h"

namespace mlkv {
namespace {

const std::string kModel = "[model]\nlayers = 2\nd_model = 32\nheads = 4\n[train]\nsteps = 1\n";

TEST(ConfigUnicode, ShieldSwapsOnlyTheUnclassifiableCodePointsAndIsUndone) {
  // U+00A7 and U+03EB (block 0), U+2C5E (block 11), U+FB26 (block 63): swapped; U+00A0, U+3000,
  // U+FEFF (answered by TOML++), U+2C5D and U+2192 (plain blocks), ASCII, malformed bytes: kept.
  const std::string swapped = "\u00a7\u03eb\u2c5e\ufb26", kept = "a\u00a0\u3000\ufeff\u2c5d\u2192\xc3";
  const std::string shielded = shield_for_toml(swapped + kept, "t.toml");
  EXPECT_EQ(shielded.substr(shielded.size() - kept.size()), kept);
  for (const char* original : {"\u00a7", "\u03eb", "\u2c5e", "\ufb26"})
    EXPECT_EQ(shielded.find(original), std::string::npos) << original;
  EXPECT_EQ(unshield_from_toml(shielded), swapped + kept);
}

TEST(ConfigUnicode, StringsKeepTheirCharacters) {
  // The line-ending backslash case of tomlplusplus issue 190, and a model name in Greek.
  const Config c = config_from_toml_string("[model]\nname = \"\"\"\\\n  \u00a7 \u03b1\u03b2\"\"\"\n" + kModel.substr(8), "u.toml");
  EXPECT_EQ(c.model.name, "\u00a7 \u03b1\u03b2");
  // A bare word after --set fails to parse as TOML (without undefined behaviour) and is taken as text.
  const std::string file = ::testing::TempDir() + "config-unicode.toml";
  std::ofstream(file) << kModel;
  EXPECT_EQ(load_config(file, {"model.name=\u00e9t\u00e9"}).model.name, "\u00e9t\u00e9");
  std::remove(file.c_str());
}

TEST(ConfigUnicode, AStrayCodePointIsASyntaxErrorNamingItsPlace) {
  try {
    config_from_toml_string(kModel + "seed = 5\u03eb\n", "u.toml");
    FAIL() << "accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("u.toml:7:"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find("\U000f03eb"), std::string::npos) << "the swapped code point leaked: " << e.what();
  }
  try {
    config_from_toml_string(kModel + "# \U000f0001\n", "u.toml");
    FAIL() << "accepted a private-use code point of the swap range";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("u.toml:7:3: private-use character U+F0001"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mlkv
