#include "core/env.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <string>

#include "core/errors.h"

namespace mlkv {

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return s;
}

std::string quoted(const char* name, const char* value) {
  return std::string("environment variable ") + name + "='" + value + "'";
}

}  // namespace

int env_switch(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return -1;
  const std::string s = lower(v);
  if (s == "0" || s == "off" || s == "false" || s == "no") return 0;
  if (s == "1" || s == "on" || s == "true" || s == "yes") return 1;
  // A typo must not silently mean "on" (or "off"): these switch measured paths and kernels.
  throw ConfigError(quoted(name, v) + " is not a switch: set 1, on, true or yes; 0, off, false or no; or unset it");
}

long env_int(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || std::isspace(static_cast<unsigned char>(*v)) || errno == ERANGE)
    throw ConfigError(quoted(name, v) + " is not a whole decimal number");
  return x;
}

}  // namespace mlkv
