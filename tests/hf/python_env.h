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

// The interpreter of scripts/plot.py: $MLKV_PLOT_PYTHON, else python3 on PATH (Debian's python3 with
// python3-matplotlib, which scripts/setup.sh installs; the venv does not carry matplotlib).
inline std::string plot_python() {
  if (const char* p = std::getenv("MLKV_PLOT_PYTHON"); p && *p) return p;
  return "python3";
}

// Empty when `interpreter` imports every module of `modules` ("torch, transformers"), else the reason.
inline std::string python_lacks(const std::string& modules, const std::string& interpreter = python(),
                                const std::string& hint = "make the venv with scripts/python_env.sh") {
  static std::map<std::string, std::string> seen;
  const std::string key = interpreter + "|" + modules;
  if (auto it = seen.find(key); it != seen.end()) return it->second;
  std::string why;
  if (interpreter.empty())
    why = "no interpreter: set MLKV_PYTHON (MLKV_PYTHON=$(bash scripts/python_env.sh)) or -DMLKV_PYTHON=";
  else if (std::system(("'" + interpreter + "' -c 'import " + modules + "' >/dev/null 2>&1").c_str()) != 0)
    why = interpreter + " cannot import " + modules + " (" + hint + ")";
  return seen[key] = why;
}

}  // namespace mlkv::test

// In a test body or SetUp: skip (fail under CI=true) unless the interpreter imports `modules`.
#define MLKV_REQUIRE_PYTHON(modules) MLKV_REQUIRE_PYTHON_WHY(::mlkv::test::python_lacks(modules))
// The same for a reason computed by python_lacks(modules, interpreter, hint).
#define MLKV_REQUIRE_PYTHON_WHY(lacks)                                                \
  do {                                                                                \
    const std::string mlkv_why_ = (lacks);                                            \
    if (!mlkv_why_.empty()) {                                                         \
      if (::mlkv::test::in_ci()) FAIL() << "CI=true and " << mlkv_why_;              \
      GTEST_SKIP() << mlkv_why_;                                                      \
    }                                                                                 \
  } while (0)
