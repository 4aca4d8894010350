// The CUDA backend's public face: a factory for the bf16 Backend of core/backend.h, and device
// discovery. Plain C++ (no CUDA types), so core/ and launch/ include it without nvcc; it is only
// compiled and linked when MLKV_CUDA is ON (callers guard with #ifdef MLKV_HAVE_CUDA).
#pragma once
#include <memory>

#include "core/backend.h"

namespace mlkv {

// A Backend on GPU `device_index`: bf16 activations and weights, fp32 accumulation, one stream.
// Throws mlkv::Error when the device cannot be used.
std::unique_ptr<Backend> make_cuda_backend(int device_index);

// Number of usable CUDA devices; 0 (never throws) when there is no driver or no GPU.
int cuda_device_count();

// The cudaStream_t every op of `b` runs on (as void*, to keep this header CUDA-free), for code
// that must order its own work with the backend's (NCCL, the cuDNN attention). b must be CUDA.
void* cuda_backend_stream(Backend& b);

}  // namespace mlkv
