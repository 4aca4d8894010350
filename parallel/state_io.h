// Reading and writing one parameter view's fp32 state (master, Adam m, Adam v) of a model whose
// state is NOT sharded over data-parallel ranks: shared by the single-process Context and the
// distributed one (which handles ZeRO-1 shards itself).
#pragma once
#include <vector>

#include "core/model.h"
#include "core/optimizer.h"
#include "parallel/context.h"

namespace mlkv::parallel {

// Host copy of view v (local layout) of `kind`.
std::vector<float> read_view(Model& model, AdamW& opt, const ParamView& v, StateKind kind);
// Writes view v from host `local` (v.numel values); master writes refresh the compute copy.
void write_view(Model& model, AdamW& opt, const ParamView& v, StateKind kind, const float* local);
// This rank's slice of full tensor `full` (checked against v's full shape).
std::vector<float> local_slice(const ParamView& v, const std::vector<float>& full);
// Product of the full (tp = 1) shape.
int64_t full_numel(const ParamView& v);

}  // namespace mlkv::parallel
