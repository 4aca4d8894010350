// MpiCommunicator: deterministic host-memory collectives (see mpi_communicator.h).
#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/errors.h"

namespace mlkv::parallel {

size_t dtype_bytes(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
  }
  return 0;
}

DType act_dtype(int act_bytes) {
  if (act_bytes == 4) return DType::f32;
  if (act_bytes == 2) return DType::bf16;
  throw Error("no communicator dtype for " + std::to_string(act_bytes) + "-byte activations");
}

void check_mpi(int rc, const char* what, const std::string& group) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw Error(std::string(what) + " on the " + group + " group failed: " + std::string(msg, len));
}

static void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void ensure_mpi_initialized() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return;
  int provided = 0;
  // FUNNELED: only the main thread talks MPI (the NCCL watchdog and data prefetch threads never do).
  check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread", "world");
  std::atexit(finalize_at_exit);
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name) : comm_(comm), name_(std::move(name)) {
  MPI_Comm_size(comm_, &size_);
  MPI_Comm_rank(comm_, &rank_);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::split(MPI_Comm parent, int color, int key, std::string name) {
  MPI_Comm c = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split(parent, color, key, &c), "MPI_Comm_split", name);
  return std::make_unique<MpiCommunicator>(c, std::move(name));
}

namespace {

// MPI counts are ints: collectives move at most this many bytes per rank per call.
constexpr int64_t kMaxChunkBytes = int64_t{1} << 30;

template <class T>
void reduce_in_order(T* out, const T* parts, int ranks, int64_t count, ReduceOp op) {
  std::memcpy(out, parts, count * sizeof(T));
  for (int r = 1; r < ranks; ++r) {
    const T* p = parts + r * count;
    if (op == ReduceOp::sum)
      for (int64_t i = 0; i < count; ++i) out[i] += p[i];
    else
      for (int64_t i = 0; i < count; ++i) out[i] = std::max(out[i], p[i]);
  }
}

void reduce_typed(void* out, const void* parts, int ranks, int64_t count, DType t, ReduceOp op,
                  const std::string& group) {
  switch (t) {
    case DType::f32:
      return reduce_in_order(static_cast<float*>(out), static_cast<const float*>(parts), ranks, count, op);
    case DType::f64:
      return reduce_in_order(static_cast<double*>(out), static_cast<const double*>(parts), ranks, count, op);
    case DType::bf16: break;
  }
  throw Error("MPI communicator (" + group + "): bf16 reductions need the NCCL backend");
}

}  // namespace

// All-to-all of each rank's chunk, then a rank-ordered reduction of the pieces received:
// deterministic, and the same bits on every rank for the same inputs.
static void reduce_scatter_op(MPI_Comm comm, int size, int rank, void* out, const void* in, int64_t count, DType t,
                              ReduceOp op, const std::string& group) {
  const size_t eb = dtype_bytes(t);
  const int64_t seg = std::max<int64_t>(1, kMaxChunkBytes / static_cast<int64_t>(eb) / size);
  std::vector<char> send, recv;
  for (int64_t s0 = 0; s0 < count; s0 += seg) {
    const int64_t n = std::min(seg, count - s0);
    send.resize(size * n * eb);
    recv.resize(size * n * eb);
    for (int r = 0; r < size; ++r)
      std::memcpy(send.data() + r * n * eb, static_cast<const char*>(in) + (r * count + s0) * eb, n * eb);
    check_mpi(MPI_Alltoall(send.data(), static_cast<int>(n * eb), MPI_BYTE, recv.data(), static_cast<int>(n * eb),
                           MPI_BYTE, comm),
              "MPI_Alltoall", group);
    reduce_typed(static_cast<char*>(out) + s0 * eb, recv.data(), size, n, t, op, group);
  }
  (void)rank;
}

void MpiCommunicator::reduce_scatter(void* out, const void* in, int64_t count, DType t, Queue) {
  if (size_ == 1) {
    if (out != in) std::memmove(out, in, count * dtype_bytes(t));
    return;
  }
  reduce_scatter_op(comm_, size_, rank_, out, in, count, t, ReduceOp::sum, name_);
}

void MpiCommunicator::all_gather(void* out, const void* in, int64_t count, DType t, Queue) {
  const size_t eb = dtype_bytes(t);
  char* o = static_cast<char*>(out);
  if (size_ == 1) {
    if (out != in) std::memmove(out, in, count * eb);
    return;
  }
  const int64_t seg = std::max<int64_t>(1, kMaxChunkBytes / static_cast<int64_t>(eb) / size_);
  std::vector<char> mine(static_cast<const char*>(in), static_cast<const char*>(in) + count * eb), recv;
  for (int64_t s0 = 0; s0 < count; s0 += seg) {
    const int64_t n = std::min(seg, count - s0);
    recv.resize(size_ * n * eb);
    check_mpi(MPI_Allgather(mine.data() + s0 * eb, static_cast<int>(n * eb), MPI_BYTE, recv.data(),
                            static_cast<int>(n * eb), MPI_BYTE, comm_),
              "MPI_Allgather", name_);
    for (int r = 0; r < size_; ++r) std::memcpy(o + (r * count + s0) * eb, recv.data() + r * n * eb, n * eb);
  }
}

void MpiCommunicator::all_reduce(void* buf, int64_t count, DType t, ReduceOp op, Queue) {
  if (size_ == 1 || count == 0) return;
  // Reduce-scatter of a padded copy, then all-gather: each element is reduced by one rank in
  // rank order, and every rank receives those same bits.
  const size_t eb = dtype_bytes(t);
  const int64_t chunk = (count + size_ - 1) / size_;
  std::vector<char> padded(size_ * chunk * eb, 0), mine(chunk * eb);
  std::memcpy(padded.data(), buf, count * eb);
  reduce_scatter_op(comm_, size_, rank_, mine.data(), padded.data(), chunk, t, op, name_);
  all_gather(padded.data(), mine.data(), chunk, t, Queue::compute);
  std::memcpy(buf, padded.data(), count * eb);
}

void MpiCommunicator::broadcast(void* buf, int64_t count, DType t, int root, Queue) {
  if (size_ == 1) return;
  const size_t eb = dtype_bytes(t);
  for (int64_t s0 = 0; s0 < count * static_cast<int64_t>(eb); s0 += kMaxChunkBytes) {
    const int64_t n = std::min<int64_t>(kMaxChunkBytes, count * eb - s0);
    check_mpi(MPI_Bcast(static_cast<char*>(buf) + s0, static_cast<int>(n), MPI_BYTE, root, comm_), "MPI_Bcast",
              name_);
  }
}

}  // namespace mlkv::parallel
