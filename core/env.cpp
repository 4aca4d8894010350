#include "core/env.h"

#include <cstdlib>
#include <cstring>

namespace mlkv {

int env_switch(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return -1;
  return std::strcmp(v, "0") == 0 ? 0 : 1;
}

long env_int(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  return *end == '\0' ? x : fallback;
}

}  // namespace mlkv
