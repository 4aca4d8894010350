// Communicator: collectives over one process group (world, data-parallel, tensor-parallel, or
// the ranks sharing a replicated KV head), on buffers of the backend's memory.
//
// Two implementations:
//   MpiCommunicator  (mpi_communicator.cpp)  host memory: the CPU backend, CI, and host-side
//                    scalars (loss sums, gradient norms) of every run. Reductions are done in
//                    rank order by us, so results are identical on every rank and run to run.
//   NcclCommunicator (nccl_communicator.cpp) device memory, bootstrapped over MPI; errors and
//                    hangs are caught by a watchdog thread (ncclCommGetAsyncError, a timeout).
//
// Ordering: an op "on the compute queue" is ordered after everything the backend has issued and
// before everything it issues next (NCCL: enqueued on the backend's stream; MPI: blocking).
// Ops on the side queue run concurrently with compute (NCCL: a second stream) and are ordered
// against it only through side_wait_compute() / compute_wait_side(): that is how gradient
// buckets are reduced while the backward pass goes on. The dp and kv groups share one side
// queue (kv reductions must precede the buckets that contain them); tp has its own.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace mlkv::parallel {

enum class DType { f32, f64, bf16 };
enum class ReduceOp { sum, max };
enum class Queue { compute, side };

size_t dtype_bytes(DType t);
// The backend's compute dtype (act_bytes() 4 → f32, 2 → bf16).
DType act_dtype(int act_bytes);

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int size() const = 0;
  virtual int rank() const = 0;
  virtual const std::string& name() const = 0;  // "world", "dp", "tp", "kv": for logs and errors

  // buf[count] ← op over ranks of buf[count].
  virtual void all_reduce(void* buf, int64_t count, DType t, ReduceOp op = ReduceOp::sum,
                          Queue q = Queue::compute) = 0;
  // out[count] ← Σ over ranks of in[rank()·count, (rank()+1)·count). out may equal in + rank()·count.
  virtual void reduce_scatter(void* out, const void* in, int64_t count, DType t, Queue q = Queue::compute) = 0;
  // out[size()·count] ← every rank's in[count], in rank order. in may equal out + rank()·count.
  virtual void all_gather(void* out, const void* in, int64_t count, DType t, Queue q = Queue::compute) = 0;
  virtual void broadcast(void* buf, int64_t count, DType t, int root, Queue q = Queue::compute) = 0;

  // Side-queue work issued after this waits for compute work issued before it.
  virtual void side_wait_compute() {}
  // Compute work issued after this waits for side-queue work issued before it.
  virtual void compute_wait_side() {}
};

}  // namespace mlkv::parallel
