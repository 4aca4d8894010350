// MpiCommunicator: the host-memory Communicator (CPU backend, CI, host scalars of every run).
// Sums are computed by us in rank order after an all-to-all, never by MPI's reduction
// algorithms, so every rank gets the same bits, run to run and whatever the MPI library picks.
//
// MPI has no timeouts: a rank that hangs (SIGSTOP, a stuck disk) would keep the others in a
// blocking collective forever. So every collective here is non-blocking (MPI_I*), polled with
// MPI_Test against a deadline of `timeout_s` (parallel.comm_timeout_s); past it, the rank logs the
// collective, the group and the timeout, and ends the whole job with MPI_Abort(kExitCommTimeout).
#pragma once
#include <mpi.h>

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace mlkv::parallel {

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm` (freed on destruction unless it is MPI_COMM_WORLD). Collectives
  // unfinished after `timeout_s` seconds end the job (see above).
  MpiCommunicator(MPI_Comm comm, std::string name, double timeout_s);
  ~MpiCommunicator() override;
  // The ranks of `parent` with the same color, ordered by key (MPI_Comm_split).
  static std::unique_ptr<MpiCommunicator> split(MPI_Comm parent, int color, int key, std::string name,
                                                double timeout_s);

  int size() const override { return size_; }
  int rank() const override { return rank_; }
  const std::string& name() const override { return name_; }
  MPI_Comm comm() const { return comm_; }

  // (the same defaults as Communicator's, for calls through this type)
  void all_reduce(void* buf, int64_t count, DType t, ReduceOp op = ReduceOp::sum, Queue q = Queue::compute) override;
  void reduce_scatter(void* out, const void* in, int64_t count, DType t, Queue q = Queue::compute) override;
  void all_gather(void* out, const void* in, int64_t count, DType t, Queue q = Queue::compute) override;
  void broadcast(void* buf, int64_t count, DType t, int root, Queue q = Queue::compute) override;
  void barrier();

  // Waits for `req`, started by `what` (e.g. "MPI_Igatherv") on this group, at most the timeout;
  // past it, ends the job (never returns). For non-blocking calls made outside this class.
  void wait(MPI_Request& req, const char* what) const;

 private:
  // All-to-all of each rank's piece of `in`, then a rank-ordered reduction into `out`.
  void reduce_scatter_op(void* out, const void* in, int64_t count, DType t, ReduceOp op);

  MPI_Comm comm_;
  std::string name_;
  int size_ = 1, rank_ = 0;
  double timeout_s_;
};

// Initialises MPI once per process (MPI_THREAD_FUNNELED; finalised at exit). Safe to call often.
void ensure_mpi_initialized();
// Throws mlkv::Error naming the call and the group when an MPI call fails.
// (The timeout's exit code, kExitCommTimeout, is in core/errors.h with the others.)
void check_mpi(int rc, const char* what, const std::string& group);

}  // namespace mlkv::parallel
