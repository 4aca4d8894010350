// core/env.h: how switches and integers are read from the environment, and that a value that is
// neither is an error naming the variable, never a silent default.
#include "core/env.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "core/errors.h"

namespace {

constexpr const char* kVar = "MLKV_ENV_TEST_VARIABLE";

// The ConfigError that reading kVar = value with `read` throws: exit code 2, variable and value named.
template <class Read>
void expect_rejected(const char* value, Read read) {
  ::setenv(kVar, value, 1);
  try {
    read();
    ADD_FAILURE() << "'" << value << "' was accepted";
  } catch (const mlkv::ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(kVar), std::string::npos) << what;
    EXPECT_NE(what.find(std::string("'") + value + "'"), std::string::npos) << what;
    EXPECT_EQ(e.exit_code(), mlkv::kExitBadInput);
  }
}

TEST(Env, SwitchIsUnsetOffOrOn) {
  ::unsetenv(kVar);
  EXPECT_EQ(mlkv::env_switch(kVar), -1);
  ::setenv(kVar, "", 1);
  EXPECT_EQ(mlkv::env_switch(kVar), -1);
  for (const char* off : {"0", "off", "false", "no", "OFF", "False"}) {
    ::setenv(kVar, off, 1);
    EXPECT_EQ(mlkv::env_switch(kVar), 0) << off;
  }
  for (const char* on : {"1", "on", "true", "yes", "ON", "Yes"}) {
    ::setenv(kVar, on, 1);
    EXPECT_EQ(mlkv::env_switch(kVar), 1) << on;
  }
  ::unsetenv(kVar);
}

// "00", "2" or "offf" used to read as on: a typo must not switch a kernel path silently.
TEST(Env, SwitchRejectsOtherValues) {
  for (const char* bad : {"00", "2", "offf", "y", " 1", "1 "}) expect_rejected(bad, [] { mlkv::env_switch(kVar); });
  ::unsetenv(kVar);
}

TEST(Env, IntegerOrFallback) {
  ::unsetenv(kVar);
  EXPECT_EQ(mlkv::env_int(kVar, 7), 7);
  ::setenv(kVar, "", 1);
  EXPECT_EQ(mlkv::env_int(kVar, 7), 7);
  ::setenv(kVar, "42", 1);
  EXPECT_EQ(mlkv::env_int(kVar, 7), 42);
  ::setenv(kVar, "-3", 1);
  EXPECT_EQ(mlkv::env_int(kVar, 7), -3);
  ::unsetenv(kVar);
}

// "16MiB" used to read as the fallback (the default ran under the forced value's name).
TEST(Env, IntegerRejectsOtherValues) {
  for (const char* bad : {"4x", "x4", "1.5", " ", " 4", "16MiB", "99999999999999999999999"})
    expect_rejected(bad, [] { mlkv::env_int(kVar, 7); });
  ::unsetenv(kVar);
}

}  // namespace
