// Single-process parallel::Context, the checkpoint gather/scatter built on it, and make_context.
#include "parallel/context.h"

#include <mpi.h>

#include <cstdlib>

#include "core/errors.h"
#include "parallel/distributed_context.h"
#include "parallel/state_io.h"

namespace mlkv::parallel {

int64_t full_numel(const ParamView& v) {
  int64_t n = 1;
  for (int64_t s : v.tp.full_shape) n *= s;
  return n;
}

static float* state_ptr(Model& model, AdamW& opt, StateKind kind) {
  switch (kind) {
    case StateKind::master: return model.master();
    case StateKind::adam_m: return opt.m();
    case StateKind::adam_v: return opt.v();
  }
  return nullptr;
}

std::vector<float> read_view(Model& model, AdamW& opt, const ParamView& v, StateKind kind) {
  const float* src = state_ptr(model, opt, kind);
  if (!src) throw Error("parameter state of '" + v.name + "' is not held whole on this rank");
  return model.backend().download_f32(src + v.offset, v.numel);
}

std::vector<float> local_slice(const ParamView& v, const std::vector<float>& full) {
  if (static_cast<int64_t>(full.size()) != full_numel(v))
    throw CheckpointError("tensor '" + v.name + "' has " + std::to_string(full.size()) +
                          " elements, the model needs " + std::to_string(full_numel(v)));
  std::vector<float> local(v.numel);
  slice_from_full(local.data(), full.data(), v);
  return local;
}

void write_view(Model& model, AdamW& opt, const ParamView& v, StateKind kind, const float* local) {
  Backend& be = model.backend();
  const size_t bytes = v.numel * sizeof(float);
  if (kind != StateKind::master) {
    be.upload(state_ptr(model, opt, kind) + v.offset, local, bytes);
    return;
  }
  char* compute = static_cast<char*>(model.compute_params()) + v.offset * be.act_bytes();
  if (model.master()) {
    be.upload(model.master() + v.offset, local, bytes);
    if (compute != reinterpret_cast<char*>(model.master() + v.offset))
      be.cast_f32_to_act(compute, model.master() + v.offset, v.numel);
    return;
  }
  float* tmp = static_cast<float*>(be.alloc(bytes));
  be.upload(tmp, local, bytes);
  be.cast_f32_to_act(compute, tmp, v.numel);
  be.release(tmp);
}

UpdateStats Context::optimizer_step(AdamW& opt, Model& model, double lr) {
  UpdateStats st = opt.step(model.master(), model.compute_params(), model.grads(), lr);
  return st;
}

std::unique_ptr<AdamW> Context::make_optimizer(Model& model, const OptimSection& opt) {
  return std::make_unique<AdamW>(model.backend(), model.layout(), opt);
}

std::vector<float> Context::gather_tensor(Model& model, AdamW& opt, const std::string& name, StateKind kind) {
  const ParamView& v = model.layout().at(name);
  const std::vector<float> local = read_view(model, opt, v, kind);
  std::vector<float> full(full_numel(v));
  place_into_full(full.data(), local.data(), v);
  return full;
}

void Context::scatter_tensor(Model& model, AdamW& opt, const std::string& name, StateKind kind,
                             const std::vector<float>& full) {
  const ParamView& v = model.layout().at(name);
  const std::vector<float> local = local_slice(v, full);
  write_view(model, opt, v, kind, local.data());
}

std::vector<float> Context::gather_full(Model& model, AdamW& opt, StateKind kind) {
  const ParamLayout full_layout(model.spec());
  std::vector<float> out;
  if (is_root()) out.assign(full_layout.total(), 0.0f);
  for (const ParamView& v : full_layout.views()) {
    const std::vector<float> t = gather_tensor(model, opt, v.name, kind);
    if (is_root()) std::copy(t.begin(), t.end(), out.begin() + v.offset);
  }
  return out;
}

void Context::scatter_full(Model& model, AdamW& opt, StateKind kind, const std::vector<float>& full) {
  const ParamLayout full_layout(model.spec());
  if (static_cast<int64_t>(full.size()) != full_layout.total())
    throw CheckpointError("full state vector has " + std::to_string(full.size()) + " elements, the model needs " +
                          std::to_string(full_layout.total()));
  for (const ParamView& v : full_layout.views())
    scatter_tensor(model, opt, v.name, kind,
                   std::vector<float>(full.begin() + v.offset, full.begin() + v.offset + v.numel));
}

std::unique_ptr<Context> make_context(const Config& cfg, Backend& backend) {
  const LaunchInfo li = detect_launch();
  if (!li.distributed) {
    if (cfg.parallel.tp > 1)
      throw ConfigError("parallel.tp = " + std::to_string(cfg.parallel.tp) +
                        " needs that many ranks: start with mpirun -np N (N a multiple of tp) or srun");
    return std::make_unique<Context>();
  }
  ensure_mpi_initialized();
  int size = 1, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const Topology topo = make_topology(size, rank, local_rank(), cfg.parallel.tp);
  return std::make_unique<DistributedContext>(cfg, backend, topo);
}

void abort_job(int exit_code) {
  int init = 0, fin = 0, size = 1;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin) {
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size > 1) MPI_Abort(MPI_COMM_WORLD, exit_code);
  }
  std::exit(exit_code);
}

}  // namespace mlkv::parallel
