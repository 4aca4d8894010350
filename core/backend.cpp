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

std::string Backend::attention_plan(int, int, int) { return "flash (the one attention of this backend)"; }

void Backend::layernorm_pair_forward(void* out1, void* out2, float* mean, float* rstd, const void* in, const void* w1,
                                     const void* b1, const void* w2, const void* b2, int64_t N, int C, float eps) {
  layernorm_forward(out1, mean, rstd, in, w1, b1, N, C, eps);
  layernorm_forward(out2, mean, rstd, in, w2, b2, N, C, eps);  // the same statistics again
}

void Backend::layernorm_pair_backward(void* din, float* dw1, float* db1, float* dw2, float* db2, const void* dout1,
                                      const void* dout2, const void* in, const void* w1, const void* w2,
                                      const float* mean, const float* rstd, int64_t N, int C) {
  layernorm_backward(din, dw2, db2, dout2, in, w2, mean, rstd, N, C);
  layernorm_backward(din, dw1, db1, dout1, in, w1, mean, rstd, N, C);
}

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
