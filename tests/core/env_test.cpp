// core/env.h: how switches and integers are read from the environment.
#include "core/env.h"

#include <gtest/gtest.h>

#include <cstdlib>

namespace {

constexpr const char* kVar = "MLKV_ENV_TEST_VARIABLE";

TEST(Env, SwitchIsUnsetOffOrOn) {
  ::unsetenv(kVar);
  EXPECT_EQ(mlkv::env_switch(kVar), -1);
  ::setenv(kVar, "", 1);
  EXPECT_EQ(mlkv::env_switch(kVar), -1);
  ::setenv(kVar, "0", 1);
  EXPECT_EQ(mlkv::env_switch(kVar), 0);
  for (const char* on : {"1", "yes", "00", "2"}) {
    ::setenv(kVar, on, 1);
    EXPECT_EQ(mlkv::env_switch(kVar), 1) << on;
  }
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
  for (const char* bad : {"4x", "x4", "1.5", " "}) {
    ::setenv(kVar, bad, 1);
    EXPECT_EQ(mlkv::env_int(kVar, 7), 7) << "'" << bad << "'";
  }
  ::unsetenv(kVar);
}

}  // namespace
