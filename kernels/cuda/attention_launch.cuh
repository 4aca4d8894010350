// Host-side helpers shared by the attention launchers: argument checks, launch checks and the
// dynamic shared-memory opt-in. Included only from the attention .cu files.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "core/errors.h"

namespace mlkv::cuda::attn {

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string("attention: ") + what + ": " + cudaGetErrorString(e));
}

// Throws after a launch that failed to start (bad configuration, too much shared memory).
inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

inline void check_shape(const char* op, int B, int T, int H, int KVH, int hd) {
  auto fail = [&](const std::string& why) {
    throw Error(std::string(op) + ": " + why + " (B=" + std::to_string(B) + " T=" + std::to_string(T) +
                " H=" + std::to_string(H) + " KVH=" + std::to_string(KVH) + " hd=" + std::to_string(hd) + ")");
  };
  if (hd != 64 && hd != 80 && hd != 128 && hd != 256)
    fail("unsupported head dim " + std::to_string(hd) + "; the CUDA attention kernels support 64, 80, 128, 256");
  if (B <= 0 || T <= 0 || H <= 0 || KVH <= 0) fail("sizes must be positive");
  if (H % KVH != 0) fail("query heads must be a multiple of KV heads");
  if (B > 65535 || H > 65535) fail("B and H must be at most 65535 (grid limits)");
}

// Kernels above 48 KB of dynamic shared memory need an explicit opt-in (per device; cheap, so
// it is simply repeated before every launch instead of cached per device).
template <typename Kernel>
inline void allow_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
}

}  // namespace mlkv::cuda::attn
