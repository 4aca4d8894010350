// Environment variables read as switches and numbers (measurement knobs such as
// MLKV_ATTN_PINGPONG, launcher variables such as OMPI_COMM_WORLD_SIZE): one reading rule for all.
#pragma once

namespace mlkv {

// -1 when `name` is unset or empty, 0 when it is "0", 1 for any other value.
int env_switch(const char* name);

// The decimal integer in `name`, or `fallback` when it is unset, empty or not wholly an integer.
long env_int(const char* name, long fallback);

}  // namespace mlkv
