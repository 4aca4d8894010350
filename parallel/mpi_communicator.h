// MpiCommunicator: the host-memory Communicator (CPU backend, CI, host scalars of every run).
// Sums are computed by us in rank order after an all-to-all, never by MPI's reduction
// algorithms, so every rank gets the same bits, run to run and whatever the MPI library picks.
#pragma once
#include <mpi.h>

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace mlkv::parallel {

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm` (freed on destruction unless it is MPI_COMM_WORLD).
  MpiCommunicator(MPI_Comm comm, std::string name);
  ~MpiCommunicator() override;
  // The ranks of `parent` with the same color, ordered by key (MPI_Comm_split).
  static std::unique_ptr<MpiCommunicator> split(MPI_Comm parent, int color, int key, std::string name);

  int size() const override { return size_; }
  int rank() const override { return rank_; }
  const std::string& name() const override { return name_; }
  MPI_Comm comm() const { return comm_; }

  // (the same defaults as Communicator's, for calls through this type)
  void all_reduce(void* buf, int64_t count, DType t, ReduceOp op = ReduceOp::sum, Queue q = Queue::compute) override;
  void reduce_scatter(void* out, const void* in, int64_t count, DType t, Queue q = Queue::compute) override;
  void all_gather(void* out, const void* in, int64_t count, DType t, Queue q = Queue::compute) override;
  void broadcast(void* buf, int64_t count, DType t, int root, Queue q = Queue::compute) override;

 private:
  MPI_Comm comm_;
  std::string name_;
  int size_ = 1, rank_ = 0;
};

// Initialises MPI once per process (MPI_THREAD_FUNNELED; finalised at exit). Safe to call often.
void ensure_mpi_initialized();
// Throws mlkv::Error naming the call and the group when an MPI call fails.
void check_mpi(int rc, const char* what, const std::string& group);

}  // namespace mlkv::parallel
