// NcclCommunicator and its watchdog (see nccl_communicator.h). Built only with CUDA.
#include "parallel/nccl_communicator.h"

#ifdef MLKV_HAVE_CUDA
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "core/errors.h"
#include "kernels/cuda/cuda_backend.h"
#include "parallel/mpi_communicator.h"

namespace mlkv::parallel {

namespace {

using Clock = std::chrono::steady_clock;

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string(what) + ": " + cudaGetErrorString(e));
}

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
  }
  return ncclFloat32;
}

// Streams, events and the watchdog shared by every communicator of this process.
class NcclRuntime {
 public:
  NcclRuntime(cudaStream_t compute, int device, int world_rank, double timeout_s)
      : compute_(compute), device_(device), rank_(world_rank), timeout_(timeout_s) {
    int lo = 0, hi = 0;
    check_cuda(cudaDeviceGetStreamPriorityRange(&lo, &hi), "cudaDeviceGetStreamPriorityRange");
    // High priority: a bucket's reduce-scatter should not queue behind the backward's GEMMs.
    for (int i = 0; i < kSides; ++i) {
      check_cuda(cudaStreamCreateWithPriority(&side_[i], cudaStreamNonBlocking, hi), "cudaStreamCreateWithPriority");
      check_cuda(cudaEventCreateWithFlags(&compute_done_[i], cudaEventDisableTiming), "cudaEventCreate");
      check_cuda(cudaEventCreateWithFlags(&side_done_[i], cudaEventDisableTiming), "cudaEventCreate");
    }
  }
  ~NcclRuntime() {
    stop_watchdog();
    for (cudaStream_t s : side_) cudaStreamSynchronize(s);
    for (auto& [comm, name] : comms_) ncclCommDestroy(comm);
    for (auto& q : pending_)
      for (auto& p : q) cudaEventDestroy(p.event);
    for (cudaEvent_t e : free_) cudaEventDestroy(e);
    for (int i = 0; i < kSides; ++i) {
      cudaEventDestroy(compute_done_[i]);
      cudaEventDestroy(side_done_[i]);
      cudaStreamDestroy(side_[i]);
    }
  }

  // Side stream 0 carries the gradient buckets (dp, and kv, which must precede them in order);
  // side stream 1 the tensor-parallel group's overlapped all-reduces, so neither queues behind
  // the other.
  static constexpr int kSides = 2;
  cudaStream_t stream(Queue q, int side) const { return q == Queue::side ? side_[side] : compute_; }
  int rank() const { return rank_; }

  void add_comm(ncclComm_t c, const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    comms_.push_back({c, name});
  }

  // Called after every collective is enqueued: the watchdog watches its completion.
  void track(Queue q, int side, const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    cudaEvent_t e;
    if (free_.empty()) {
      check_cuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
    } else {
      e = free_.back();
      free_.pop_back();
    }
    check_cuda(cudaEventRecord(e, stream(q, side)), "cudaEventRecord");
    pending_[q == Queue::side ? 1 + side : 0].push_back({e, Clock::now(), what});
  }

  void side_wait_compute(int side) {
    check_cuda(cudaEventRecord(compute_done_[side], compute_), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(side_[side], compute_done_[side], 0), "cudaStreamWaitEvent");
  }
  void compute_wait_side(int side) {
    check_cuda(cudaEventRecord(side_done_[side], side_[side]), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(compute_, side_done_[side], 0), "cudaStreamWaitEvent");
  }

  void start_watchdog() {
    watchdog_ = std::thread([this] { watch(); });
  }
  void stop_watchdog() {
    stop_ = true;
    if (watchdog_.joinable()) watchdog_.join();
  }

 private:
  struct Pending {
    cudaEvent_t event;
    Clock::time_point issued;
    std::string what;
  };
  struct Named {
    ncclComm_t comm;
    std::string name;
  };

  void watch() {
    cudaSetDevice(device_);  // events and communicators belong to this rank's GPU
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      std::lock_guard<std::mutex> lock(mu_);
      for (const Named& c : comms_) {
        ncclResult_t r = ncclSuccess;
        if (ncclCommGetAsyncError(c.comm, &r) != ncclSuccess || (r != ncclSuccess && r != ncclInProgress))
          fail("asynchronous error on the " + c.name + " communicator: " + ncclGetErrorString(r));
      }
      for (auto& q : pending_) {
        while (!q.empty()) {
          const cudaError_t e = cudaEventQuery(q.front().event);
          if (e == cudaSuccess) {
            free_.push_back(q.front().event);
            q.pop_front();
            continue;
          }
          if (e != cudaErrorNotReady) fail(q.front().what + " failed: " + cudaGetErrorString(e));
          const double waited = std::chrono::duration<double>(Clock::now() - q.front().issued).count();
          if (waited > timeout_)
            fail(q.front().what + " has not finished after " + std::to_string(static_cast<int>(waited)) +
                 " s (parallel.comm_timeout_s = " + std::to_string(timeout_) + "): a rank died or is stuck",
                 kExitCommTimeout);
          break;
        }
      }
    }
  }

  // Runs on the watchdog thread: there is no way back to a step in flight, so stop everything.
  [[noreturn]] void fail(const std::string& why, int exit_code = kExitFailure) {
    std::fprintf(stderr, "[rank %d] NCCL: %s; aborting communicators and exiting\n", rank_, why.c_str());
    std::fflush(stderr);
    for (const Named& c : comms_) ncclCommAbort(c.comm);
    std::_Exit(exit_code);
  }

  cudaStream_t compute_, side_[kSides] = {};
  cudaEvent_t compute_done_[kSides] = {}, side_done_[kSides] = {};
  int device_, rank_;
  double timeout_;
  std::mutex mu_;
  std::vector<Named> comms_;
  std::deque<Pending> pending_[1 + kSides];
  std::vector<cudaEvent_t> free_;
  std::thread watchdog_;
  std::atomic<bool> stop_{false};
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, std::string name, std::shared_ptr<NcclRuntime> rt, int side)
      : comm_(comm), name_(std::move(name)), rt_(std::move(rt)), side_(side) {
    check(ncclCommCount(comm_, &size_), "ncclCommCount");
    check(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank");
    rt_->add_comm(comm_, name_);
  }
  int size() const override { return size_; }
  int rank() const override { return rank_; }
  const std::string& name() const override { return name_; }

  void all_reduce(void* buf, int64_t count, DType t, ReduceOp op, Queue q) override {
    check(ncclAllReduce(buf, buf, count, nccl_type(t), op == ReduceOp::sum ? ncclSum : ncclMax, comm_, stream(q)),
          "ncclAllReduce");
    rt_->track(q, side_, "all-reduce of " + std::to_string(count) + " elements on the " + name_ + " group");
  }
  void reduce_scatter(void* out, const void* in, int64_t count, DType t, Queue q) override {
    check(ncclReduceScatter(in, out, count, nccl_type(t), ncclSum, comm_, stream(q)), "ncclReduceScatter");
    rt_->track(q, side_, "reduce-scatter of " + std::to_string(count) + " elements per rank on the " + name_ + " group");
  }
  void all_gather(void* out, const void* in, int64_t count, DType t, Queue q) override {
    check(ncclAllGather(in, out, count, nccl_type(t), comm_, stream(q)), "ncclAllGather");
    rt_->track(q, side_, "all-gather of " + std::to_string(count) + " elements per rank on the " + name_ + " group");
  }
  void broadcast(void* buf, int64_t count, DType t, int root, Queue q) override {
    check(ncclBroadcast(buf, buf, count, nccl_type(t), root, comm_, stream(q)), "ncclBroadcast");
    rt_->track(q, side_, "broadcast on the " + name_ + " group");
  }
  void side_wait_compute() override { rt_->side_wait_compute(side_); }
  void compute_wait_side() override { rt_->compute_wait_side(side_); }

 private:
  void check(ncclResult_t r, const char* what) const {
    if (r != ncclSuccess && r != ncclInProgress)
      throw Error("[rank " + std::to_string(rt_->rank()) + "] " + what + " on the " + name_ +
                  " group failed: " + ncclGetErrorString(r));
  }
  cudaStream_t stream(Queue q) const { return rt_->stream(q, side_); }
  ncclComm_t comm_;
  std::string name_;
  std::shared_ptr<NcclRuntime> rt_;
  int side_;
  int size_ = 1, rank_ = 0;
};

void check_nccl(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) throw Error(std::string(what) + " failed: " + ncclGetErrorString(r));
}

}  // namespace

DeviceGroups make_nccl_groups(Backend& backend, const Topology& topo, int kv_copies, double timeout_s) {
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  auto rt = std::make_shared<NcclRuntime>(static_cast<cudaStream_t>(cuda_backend_stream(backend)), device,
                                          topo.world_rank, timeout_s);
  ncclUniqueId id;
  if (topo.world_rank == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  check_mpi(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast of the NCCL id", "world");
  ncclComm_t world = nullptr;
  check_nccl(ncclCommInitRank(&world, topo.world_size, id, topo.world_rank), "ncclCommInitRank");
  // Every rank takes part in every split, in the same order (ncclCommSplit is collective).
  auto split = [&](int color, int key) {
    ncclComm_t c = nullptr;
    check_nccl(ncclCommSplit(world, color, key, &c, nullptr), "ncclCommSplit");
    return c;
  };
  ncclComm_t dp = split(topo.tp_rank, topo.dp_rank);
  ncclComm_t tp = split(topo.dp_rank, topo.tp_rank);
  ncclComm_t kv = nullptr;
  if (kv_copies > 1) kv = split(topo.dp_rank * topo.tp + topo.tp_rank / kv_copies, topo.tp_rank);
  DeviceGroups g;
  g.world = std::make_unique<NcclCommunicator>(world, "world", rt, 0);
  g.dp = std::make_unique<NcclCommunicator>(dp, "dp", rt, 0);
  g.tp = std::make_unique<NcclCommunicator>(tp, "tp", rt, 1);
  if (kv) g.kv = std::make_unique<NcclCommunicator>(kv, "kv", rt, 0);
  rt->start_watchdog();
  g.runtime = rt;
  return g;
}

}  // namespace mlkv::parallel

#else  // no CUDA in this build

#include "core/errors.h"

namespace mlkv::parallel {
DeviceGroups make_nccl_groups(Backend&, const Topology&, int, double) {
  throw Error("this build has no CUDA, so no NCCL communicators");
}
}  // namespace mlkv::parallel

#endif
