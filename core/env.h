// Environment variables read as switches and numbers (measurement knobs such as
// MLKV_ATTN_PINGPONG, launcher variables such as OMPI_COMM_WORLD_SIZE): one reading rule for all.
#pragma once

namespace mlkv {

// -1 when `name` is unset or empty; 0 for 0, off, false or no; 1 for 1, on, true or yes (any case).
// Any other value throws ConfigError naming the variable and its value.
int env_switch(const char* name);

// The decimal integer in `name`, or `fallback` when it is unset or empty. A value that is not wholly
// a decimal integer (or is out of range) throws ConfigError naming the variable and its value.
long env_int(const char* name, long fallback);

}  // namespace mlkv
