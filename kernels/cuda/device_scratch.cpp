#include "kernels/cuda/device_scratch.h"

#include "kernels/cuda/backend_ops.cuh"

namespace mlkv::cuda {
namespace {

void check(cudaError_t e, const std::string& owner, const std::string& what) {
  if (e != cudaSuccess) throw_cuda_error(e, (owner + ": " + what).c_str(), __FILE__, __LINE__);
}

}  // namespace

void* DeviceScratch::get(size_t bytes) {
  int dev = 0;
  check(cudaGetDevice(&dev), owner_, "cudaGetDevice");
  std::lock_guard<std::mutex> lock(mutex_);
  if (buffers_.size() <= size_t(dev)) buffers_.resize(dev + 1);
  Buffer& b = buffers_[dev];
  if (b.bytes < bytes) {
    if (b.ptr) check(cudaFree(b.ptr), owner_, "cudaFree(workspace)");
    b = {};
    check(cudaMalloc(&b.ptr, bytes), owner_, "cudaMalloc(workspace of " + std::to_string(bytes) + " bytes)");
    b.bytes = bytes;
  }
  return b.ptr;
}

void DeviceScratch::release() {
  std::lock_guard<std::mutex> lock(mutex_);
  int current = 0;
  check(cudaGetDevice(&current), owner_, "cudaGetDevice");
  for (size_t d = 0; d < buffers_.size(); ++d) {
    if (!buffers_[d].ptr) continue;
    check(cudaSetDevice(int(d)), owner_, "cudaSetDevice");
    check(cudaFree(buffers_[d].ptr), owner_, "cudaFree(workspace)");
    buffers_[d] = {};
  }
  check(cudaSetDevice(current), owner_, "cudaSetDevice");
}

}  // namespace mlkv::cuda
