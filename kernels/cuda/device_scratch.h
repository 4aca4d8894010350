// Scratch device memory that only grows, one buffer per device: the workspace of our attention
// backward and of the cuDNN attention path. Growing frees the old buffer first (cudaFree waits for
// the device, so work still reading it finishes); release() frees every device's buffer.
// Thread-safe. CUDA errors throw mlkv::Error naming the owner and the size asked for.
#pragma once
#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

namespace mlkv::cuda {

class DeviceScratch {
 public:
  explicit DeviceScratch(std::string owner) : owner_(std::move(owner)) {}
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;

  // The current device's buffer, at least `bytes` long.
  void* get(size_t bytes);
  // Frees every device's buffer (the current device is restored).
  void release();

 private:
  struct Buffer {
    void* ptr = nullptr;
    size_t bytes = 0;
  };
  std::string owner_;
  std::mutex mutex_;
  std::vector<Buffer> buffers_;  // by device ordinal
};

}  // namespace mlkv::cuda
