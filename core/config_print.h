// The human-readable summary `mlkv-train --print-config` prints after the resolved TOML: what the
// config implies rather than what it says (KV plan, parameter count, FLOPs, KV-cache size).
#pragma once
#include <string>

#include "core/config.h"

namespace mlkv {

// Every line starts with "# ", so the resolved TOML followed by this summary is still valid TOML.
// Throws ConfigError when the config's model is impossible (load_config has already checked).
std::string describe_config(const Config& c);

}  // namespace mlkv
