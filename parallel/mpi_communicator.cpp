// MpiCommunicator: deterministic host-memory collectives (see mpi_communicator.h).
#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "core/errors.h"
#include "core/logging.h"

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

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name, double timeout_s)
    : comm_(comm), name_(std::move(name)), timeout_s_(timeout_s) {
  MPI_Comm_size(comm_, &size_);
  MPI_Comm_rank(comm_, &rank_);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::split(MPI_Comm parent, int color, int key, std::string name,
                                                        double timeout_s) {
  MPI_Comm c = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split(parent, color, key, &c), "MPI_Comm_split", name);
  return std::make_unique<MpiCommunicator>(c, std::move(name), timeout_s);
}

// A collective this slow is waiting for another rank, not moving data: poll less often and leave
// the core to the ranks (and threads) that still compute.
constexpr double kSpinSeconds = 0.05;

void MpiCommunicator::wait(MPI_Request& req, const char* what) const {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  bool slow = false;
  for (uint64_t polls = 1;; ++polls) {
    int done = 0;
    check_mpi(MPI_Test(&req, &done, MPI_STATUS_IGNORE), what, name_);
    if (done) return;
    if (!slow && polls % 256 != 0) continue;  // the clock is read every 256 polls while spinning
    const double waited = std::chrono::duration<double>(Clock::now() - start).count();
    if (waited > timeout_s_) {
      int world_rank = 0;
      MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
      log::error(log::cat(what, " on the ", name_, " group (rank ", rank_, " of ", size_, ") has not finished after ",
                          static_cast<int64_t>(waited), " s (parallel.comm_timeout_s = ", timeout_s_,
                          "): another rank died or hangs; world rank ", world_rank, " ends the job with exit code ",
                          static_cast<int>(kExitCommTimeout)));
      std::fflush(nullptr);
      MPI_Abort(MPI_COMM_WORLD, kExitCommTimeout);  // the request can never be completed or freed
      std::_Exit(kExitCommTimeout);
    }
    slow = waited > kSpinSeconds;
    if (slow) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

void MpiCommunicator::barrier() {
  if (size_ == 1) return;
  MPI_Request req = MPI_REQUEST_NULL;
  check_mpi(MPI_Ibarrier(comm_, &req), "MPI_Ibarrier", name_);
  wait(req, "MPI_Ibarrier");
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
void MpiCommunicator::reduce_scatter_op(void* out, const void* in, int64_t count, DType t, ReduceOp op) {
  const int size = size_;
  const size_t eb = dtype_bytes(t);
  const int64_t seg = std::max<int64_t>(1, kMaxChunkBytes / static_cast<int64_t>(eb) / size);
  std::vector<char> send, recv;
  for (int64_t s0 = 0; s0 < count; s0 += seg) {
    const int64_t n = std::min(seg, count - s0);
    send.resize(size * n * eb);
    recv.resize(size * n * eb);
    for (int r = 0; r < size; ++r)
      std::memcpy(send.data() + r * n * eb, static_cast<const char*>(in) + (r * count + s0) * eb, n * eb);
    MPI_Request req = MPI_REQUEST_NULL;
    check_mpi(MPI_Ialltoall(send.data(), static_cast<int>(n * eb), MPI_BYTE, recv.data(), static_cast<int>(n * eb),
                            MPI_BYTE, comm_, &req),
              "MPI_Ialltoall", name_);
    wait(req, "MPI_Ialltoall");
    reduce_typed(static_cast<char*>(out) + s0 * eb, recv.data(), size, n, t, op, name_);
  }
}

void MpiCommunicator::reduce_scatter(void* out, const void* in, int64_t count, DType t, Queue) {
  if (size_ == 1) {
    if (out != in) std::memmove(out, in, count * dtype_bytes(t));
    return;
  }
  reduce_scatter_op(out, in, count, t, ReduceOp::sum);
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
    MPI_Request req = MPI_REQUEST_NULL;
    check_mpi(MPI_Iallgather(mine.data() + s0 * eb, static_cast<int>(n * eb), MPI_BYTE, recv.data(),
                             static_cast<int>(n * eb), MPI_BYTE, comm_, &req),
              "MPI_Iallgather", name_);
    wait(req, "MPI_Iallgather");
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
  reduce_scatter_op(mine.data(), padded.data(), chunk, t, op);
  all_gather(padded.data(), mine.data(), chunk, t, Queue::compute);
  std::memcpy(buf, padded.data(), count * eb);
}

void MpiCommunicator::broadcast(void* buf, int64_t count, DType t, int root, Queue) {
  if (size_ == 1) return;
  const size_t eb = dtype_bytes(t);
  for (int64_t s0 = 0; s0 < count * static_cast<int64_t>(eb); s0 += kMaxChunkBytes) {
    const int64_t n = std::min<int64_t>(kMaxChunkBytes, count * eb - s0);
    MPI_Request req = MPI_REQUEST_NULL;
    check_mpi(MPI_Ibcast(static_cast<char*>(buf) + s0, static_cast<int>(n), MPI_BYTE, root, comm_, &req), "MPI_Ibcast",
              name_);
    wait(req, "MPI_Ibcast");
  }
}

}  // namespace mlkv::parallel
