// The interpreter of the interop tests (transformers, lm-eval, TensorBoard in a PyPI venv made by
// scripts/python_env.sh): $MLKV_PYTHON, else the CMake cache variable MLKV_PYTHON. No machine path is
// guessed. Where it is missing or lacks the modules a test needs, the test is skipped with the reason,
// except under CI=true, where it fails: CI must run these tests, not skip them (issue 16).
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <string>

namespace mlkv::test {

inline std::string python() {
  if (const char* p = std::getenv("MLKV_PYTHON"); p && *p) return p;
  return MLKV_PYTHON_DEFAULT;
}

inline bool in_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

// Empty when python() imports every module of `modules` ("torch, transformers"), else the reason.
inline std::string python_lacks(const std::string& modules) {
  static std::map<std::string, std::string> seen;
  if (auto it = seen.find(modules); it != seen.end()) return it->second;
  std::string why;
  if (python().empty())
    why = "no interpreter: set MLKV_PYTHON (MLKV_PYTHON=$(bash scripts/python_env.sh)) or -DMLKV_PYTHON=";
  else if (std::system(("'" + python() + "' -c 'import " + modules + "' >/dev/null 2>&1").c_str()) != 0)
    why = python() + " cannot import " + modules + " (make the venv with scripts/python_env.sh)";
  return seen[modules] = why;
}

}  // namespace mlkv::test

// In a test body or SetUp: skip (fail under CI=true) unless the interpreter imports `modules`.
#define MLKV_REQUIRE_PYTHON(modules)                                                  \
  do {                                                                                \
    const std::string mlkv_why_ = ::mlkv::test::python_lacks(modules);                \
    if (!mlkv_why_.empty()) {                                                         \
      if (::mlkv::test::in_ci()) FAIL() << "CI=true and " << mlkv_why_;              \
      GTEST_SKIP() << mlkv_why_;                                                      \
    }                                                                                 \
  } while (0)
