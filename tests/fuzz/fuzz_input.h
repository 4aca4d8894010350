// Shared by the fuzz harnesses: the readers under test take paths, so each input is handed to
// them as a file. An anonymous in-memory file (memfd) keeps a fuzzer's millions of inputs off the
// disk; its /proc/self/fd path opens like any file.
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace mlkv::fuzz {

// The path of a file holding exactly data[0, size); the same file, rewritten, on every call.
inline std::string input_file(const uint8_t* data, size_t size) {
  static const int fd = [] {
    const int f = ::memfd_create("mlkv-fuzz-input", MFD_CLOEXEC);
    if (f < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    return f;
  }();
  if (::ftruncate(fd, 0) != 0) std::abort();
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::pwrite(fd, data + done, size - done, static_cast<off_t>(done));
    if (n <= 0) std::abort();
    done += static_cast<size_t>(n);
  }
  return "/proc/self/fd/" + std::to_string(fd);
}

}  // namespace mlkv::fuzz
