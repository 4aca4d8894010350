// Backend selection.
#include "core/backend.h"

#include "core/config.h"
#include "core/errors.h"
#include "kernels/cpu/cpu_backend.h"
#ifdef MLKV_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace mlkv {

void Backend::select_attention(const std::string& impl) {
  if (impl != "flash" && impl != "auto")
    throw ConfigError("train.attention = \"" + impl + "\" is not available on backend " + name() +
                      " (it has one attention: \"auto\" or \"flash\")");
}

std::string Backend::attention_plan(int) { return "flash (the one attention of this backend)"; }

bool cuda_available() {
#ifdef MLKV_HAVE_CUDA
  return cuda_device_count() > 0;
#else
  return false;
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& which, int threads, [[maybe_unused]] int device_index) {
  if (which == "cpu") return std::make_unique<CpuBackend>(threads);
  if (which == "cuda" || which == "auto") {
#ifdef MLKV_HAVE_CUDA
    if (cuda_available()) return make_cuda_backend(device_index);
#endif
    if (which == "auto") return std::make_unique<CpuBackend>(threads);
    throw ConfigError("train.backend = \"cuda\" but no CUDA device is available" +
                      std::string(
#ifdef MLKV_HAVE_CUDA
                          ""
#else
                          " (this build has no CUDA support)"
#endif
                          ));
  }
  throw ConfigError("unknown backend '" + which + "' (choices: auto, cpu, cuda)");
}

std::unique_ptr<Backend> make_backend(const TrainSection& train, int device_index) {
  auto backend = make_backend(train.backend, train.threads, device_index);
  backend->select_attention(train.attention);
  return backend;
}

}  // namespace mlkv
