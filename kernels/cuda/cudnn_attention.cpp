// cuDNN SDPA through the backend (graph) API; the contract is in cudnn_attention.h.
// Per shape and direction: build the operation graph below, ask the heuristics (mode A) for
// engine configs, keep the first that finalizes into an execution plan, cache it. Per call: one
// variant pack (the data pointers, the by-value scalars, the workspace) and cudnnBackendExecute.
// The composite SDPA_FWD/BWD descriptors of cuDNN 9.19 cannot express a causal mask in the
// backward, so the graphs are the classic decomposition its fused flash engines pattern-match.
#ifdef MLKV_HAVE_CUDNN
#include "kernels/cuda/cudnn_attention.h"

#include <cudnn.h>

#include <array>
#include <cmath>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/errors.h"
#include "kernels/cuda/backend_ops.cuh"
#include "kernels/cuda/device_scratch.h"

namespace mlkv::cuda {
namespace {

using Dims = std::vector<int64_t>;

// Names an attribute and its enum spelling together, for error messages.
#define MLKV_ATTR(a) a, #a

// Tensor ids of the variant pack; virtual tensors are numbered from kFirstVirtual on.
enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV, kScale, kNegInf, kOne, kSoftmaxSum, kDQAccum,
  kFirstVirtual = 100
};

// One backend descriptor; every failing call throws with the graph's context, the step, the
// cuDNN status and cuDNN's own last message.
class Desc {
 public:
  Desc(cudnnBackendDescriptorType_t type, const std::string& where) : where_(where) {
    check(cudnnBackendCreateDescriptor(type, &d_), "cudnnBackendCreateDescriptor");
  }
  ~Desc() {
    if (d_) cudnnBackendDestroyDescriptor(d_);
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  cudnnBackendDescriptor_t get() const { return d_; }

  Desc& set(cudnnBackendAttributeName_t a, const char* name, cudnnBackendAttributeType_t t, int64_t n,
            const void* v) {
    check(cudnnBackendSetAttribute(d_, a, t, n, v), name);
    return *this;
  }
  Desc& set_i64(cudnnBackendAttributeName_t a, const char* name, int64_t v) {
    return set(a, name, CUDNN_TYPE_INT64, 1, &v);
  }
  Desc& set_i64s(cudnnBackendAttributeName_t a, const char* name, const Dims& v) {
    return set(a, name, CUDNN_TYPE_INT64, int64_t(v.size()), v.data());
  }
  Desc& set_type(cudnnBackendAttributeName_t a, const char* name, cudnnDataType_t v) {
    return set(a, name, CUDNN_TYPE_DATA_TYPE, 1, &v);
  }
  Desc& set_desc(cudnnBackendAttributeName_t a, const char* name, const Desc& v) {
    cudnnBackendDescriptor_t raw = v.get();
    return set(a, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw);
  }
  void finalize(const char* what) { check(cudnnBackendFinalize(d_), what); }
  void check(cudnnStatus_t s, const char* step) const {
    if (s != CUDNN_STATUS_SUCCESS) fail(where_, step, s);
  }

  [[noreturn]] static void fail(const std::string& where, const std::string& step, cudnnStatus_t s) {
    char detail[1024] = "";
    cudnnGetLastErrorString(detail, sizeof detail);
    throw Error("cuDNN " + cudnn_attention_library_version() + " attention (" + where + "): " + step + ": " +
                cudnnGetErrorString(s) + (detail[0] ? std::string(" (") + detail + ")" : std::string()));
  }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
  const std::string& where_;
};

Dims packed(const Dims& d) {
  Dims s(d.size(), 1);
  for (int i = int(d.size()) - 2; i >= 0; --i) s[i] = s[i + 1] * d[i + 1];
  return s;
}

// An operation graph under construction, and after build() its execution plan. Owns every
// descriptor the plan refers to, so a cached Graph is a ready-to-run plan.
class Graph {
 public:
  explicit Graph(std::string where) : where_(std::move(where)) {}
  const std::string& where() const { return where_; }

  // A tensor of the variant pack (uid < kFirstVirtual) or, with uid 0, a virtual one.
  const Desc& tensor(const Dims& dims, const Dims& strides, cudnnDataType_t type, int64_t uid = 0,
                     bool by_value = false) {
    Desc& t = descs_.emplace_back(CUDNN_BACKEND_TENSOR_DESCRIPTOR, where_);
    const bool is_virtual = uid == 0;
    t.set_type(MLKV_ATTR(CUDNN_ATTR_TENSOR_DATA_TYPE), type)
        .set_i64s(MLKV_ATTR(CUDNN_ATTR_TENSOR_DIMENSIONS), dims)
        .set_i64s(MLKV_ATTR(CUDNN_ATTR_TENSOR_STRIDES), strides)
        .set_i64(MLKV_ATTR(CUDNN_ATTR_TENSOR_UNIQUE_ID), is_virtual ? next_virtual_++ : uid)
        .set_i64(MLKV_ATTR(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT), 16)
        .set(MLKV_ATTR(CUDNN_ATTR_TENSOR_IS_VIRTUAL), CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    if (by_value) t.set(MLKV_ATTR(CUDNN_ATTR_TENSOR_IS_BY_VALUE), CUDNN_TYPE_BOOLEAN, 1, &by_value);
    t.finalize("finalize tensor");
    return t;
  }
  const Desc& virt(const Dims& dims, cudnnDataType_t type = CUDNN_DATA_FLOAT) {
    return tensor(dims, packed(dims), type);
  }
  // An fp32 scalar passed by value (a host pointer in the variant pack).
  const Desc& scalar(int64_t uid) { return tensor({1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_FLOAT, uid, true); }

  // y = x (op) b, or y = op(x) when b is null; t is BINARY_SELECT's mask; axis is GEN_INDEX's.
  const Desc& pointwise(cudnnPointwiseMode_t mode, const Desc& x, const Desc* b, const Desc& y,
                        cudnnDataType_t prec = CUDNN_DATA_FLOAT, const Desc* t = nullptr, int64_t axis = -1) {
    Desc& pw = descs_.emplace_back(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, where_);
    pw.set(MLKV_ATTR(CUDNN_ATTR_POINTWISE_MODE), CUDNN_TYPE_POINTWISE_MODE, 1, &mode)
        .set_type(MLKV_ATTR(CUDNN_ATTR_POINTWISE_MATH_PREC), prec);
    if (axis >= 0) pw.set_i64(MLKV_ATTR(CUDNN_ATTR_POINTWISE_AXIS), axis);
    pw.finalize("finalize pointwise descriptor");
    Desc& op = descs_.emplace_back(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, where_);
    op.set_desc(MLKV_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR), pw)
        .set_desc(MLKV_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_XDESC), x)
        .set_desc(MLKV_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_YDESC), y);
    if (b) op.set_desc(MLKV_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_BDESC), *b);
    if (t) op.set_desc(MLKV_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_TDESC), *t);
    add_op(op, "finalize pointwise operation");
    return y;
  }
  const Desc& reduction(cudnnReduceTensorOp_t mode, const Desc& x, const Desc& y) {
    Desc& red = descs_.emplace_back(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, where_);
    red.set(MLKV_ATTR(CUDNN_ATTR_REDUCTION_OPERATOR), CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode)
        .set_type(MLKV_ATTR(CUDNN_ATTR_REDUCTION_COMP_TYPE), CUDNN_DATA_FLOAT)
        .finalize("finalize reduction descriptor");
    Desc& op = descs_.emplace_back(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, where_);
    op.set_desc(MLKV_ATTR(CUDNN_ATTR_OPERATION_REDUCTION_DESC), red)
        .set_desc(MLKV_ATTR(CUDNN_ATTR_OPERATION_REDUCTION_XDESC), x)
        .set_desc(MLKV_ATTR(CUDNN_ATTR_OPERATION_REDUCTION_YDESC), y);
    add_op(op, "finalize reduction operation");
    return y;
  }
  // c = a · b over the last two dims, batched (and broadcast from KVH to H heads) over the first two.
  const Desc& matmul(const Desc& a, const Desc& b, const Desc& c) {
    Desc& mm = descs_.emplace_back(CUDNN_BACKEND_MATMUL_DESCRIPTOR, where_);
    mm.set_type(MLKV_ATTR(CUDNN_ATTR_MATMUL_COMP_TYPE), CUDNN_DATA_FLOAT).finalize("finalize matmul descriptor");
    Desc& op = descs_.emplace_back(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, where_);
    op.set_desc(MLKV_ATTR(CUDNN_ATTR_OPERATION_MATMUL_DESC), mm)
        .set_desc(MLKV_ATTR(CUDNN_ATTR_OPERATION_MATMUL_ADESC), a)
        .set_desc(MLKV_ATTR(CUDNN_ATTR_OPERATION_MATMUL_BDESC), b)
        .set_desc(MLKV_ATTR(CUDNN_ATTR_OPERATION_MATMUL_CDESC), c);
    add_op(op, "finalize matmul operation");
    return c;
  }
  // y: the same elements as x under other dims/strides (a transposed view).
  const Desc& reshape(const Desc& x, const Desc& y) {
    Desc& op = descs_.emplace_back(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, where_);
    op.set_desc(MLKV_ATTR(CUDNN_ATTR_OPERATION_RESHAPE_XDESC), x)
        .set_desc(MLKV_ATTR(CUDNN_ATTR_OPERATION_RESHAPE_YDESC), y);
    add_op(op, "finalize reshape operation");
    return y;
  }

  // Operation graph, heuristics (mode A), the first engine config that finalizes into a plan.
  void build(cudnnHandle_t handle) {
    Desc& graph = descs_.emplace_back(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, where_);
    graph.set(MLKV_ATTR(CUDNN_ATTR_OPERATIONGRAPH_HANDLE), CUDNN_TYPE_HANDLE, 1, &handle)
        .set(MLKV_ATTR(CUDNN_ATTR_OPERATIONGRAPH_OPS), CUDNN_TYPE_BACKEND_DESCRIPTOR, int64_t(ops_.size()),
             ops_.data())
        .finalize("finalize operation graph");
    Desc& heur = descs_.emplace_back(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, where_);
    const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    heur.set_desc(MLKV_ATTR(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH), graph)
        .set(MLKV_ATTR(CUDNN_ATTR_ENGINEHEUR_MODE), CUDNN_TYPE_HEUR_MODE, 1, &mode)
        .finalize("finalize engine heuristics");
    int64_t count = 0;
    heur.check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                        &count, nullptr),
               "count CUDNN_ATTR_ENGINEHEUR_RESULTS");
    std::vector<cudnnBackendDescriptor_t> raw;
    for (int64_t i = 0; i < count; ++i)
      raw.push_back(descs_.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, where_).get());
    heur.check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                        count, &count, raw.data()),
               "get CUDNN_ATTR_ENGINEHEUR_RESULTS");
    cudnnStatus_t last = CUDNN_STATUS_NOT_SUPPORTED;
    for (int64_t i = 0; i < count; ++i) {
      Desc& plan = descs_.emplace_back(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, where_);
      plan.set(MLKV_ATTR(CUDNN_ATTR_EXECUTION_PLAN_HANDLE), CUDNN_TYPE_HANDLE, 1, &handle)
          .set(MLKV_ATTR(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw[i]);
      last = cudnnBackendFinalize(plan.get());
      if (last != CUDNN_STATUS_SUCCESS) continue;
      plan_ = &plan;
      plan.check(cudnnBackendGetAttribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                          nullptr, &workspace_),
                 "get CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE");
      return;
    }
    Desc::fail(where_,
               "none of the " + std::to_string(count) +
                   " engine configs of heuristics mode A finalizes an execution plan (run with "
                   "CUDNN_LOGLEVEL_DBG=2 CUDNN_LOGDEST_DBG=stderr for cuDNN's reasons); last status",
               last);
  }
  size_t workspace_bytes() const { return size_t(workspace_); }

  // Runs the plan: uids[i] is read from / written to ptrs[i].
  void execute(cudnnHandle_t handle, const std::vector<int64_t>& uids, std::vector<void*> ptrs, void* ws) const {
    Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, where_);
    pack.set(MLKV_ATTR(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS), CUDNN_TYPE_INT64, int64_t(uids.size()), uids.data())
        .set(MLKV_ATTR(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS), CUDNN_TYPE_VOID_PTR, int64_t(ptrs.size()),
             ptrs.data())
        .set(MLKV_ATTR(CUDNN_ATTR_VARIANT_PACK_WORKSPACE), CUDNN_TYPE_VOID_PTR, 1, &ws)
        .finalize("finalize variant pack");
    pack.check(cudnnBackendExecute(handle, plan_->get(), pack.get()), "cudnnBackendExecute");
  }

 private:
  void add_op(Desc& op, const char* what) {
    op.finalize(what);
    ops_.push_back(op.get());
  }
  std::string where_;
  std::deque<Desc> descs_;  // a deque: references stay valid as it grows
  std::vector<cudnnBackendDescriptor_t> ops_;
  int64_t next_virtual_ = kFirstVirtual;
  const Desc* plan_ = nullptr;
  int64_t workspace_ = 0;
};

// Layouts of both graphs. Heads merged for out/dout: [B, H, T, hd] with strides [T·H·hd, hd, H·hd, 1].
struct Layout {
  int64_t B, T, H, KVH, hd;
  Dims q() const { return {B, H, T, hd}; }
  Dims kv() const { return {B, KVH, T, hd}; }
  Dims kt() const { return {B, KVH, hd, T}; }  // K (and V) read transposed: no copy
  Dims kt_strides() const { return {KVH * T * hd, T * hd, 1, hd}; }
  Dims merged_strides() const { return {T * H * hd, hd, H * hd, 1}; }
  Dims s() const { return {B, H, T, T}; }
  Dims st_strides() const { return {H * T * T, T * T, 1, T}; }  // the score matrix transposed
  Dims row() const { return {B, H, T, 1}; }
};

// S = scale · Q·Kᵀ with the causal mask (row ≥ col kept, the rest −inf) applied after `shift`
// (the backward subtracts the saved stats first, as cuDNN's backward pattern expects).
const Desc& masked_scores(Graph& g, const Layout& L, const Desc& q, const Desc& kt, const Desc& scale,
                          const Desc& neg_inf, const Desc* shift) {
  const Desc& s = g.pointwise(CUDNN_POINTWISE_MUL, g.matmul(q, kt, g.virt(L.s())), &scale, g.virt(L.s()));
  const Desc& x = shift ? g.pointwise(CUDNN_POINTWISE_SUB, s, shift, g.virt(L.s())) : s;
  const Desc& row = g.pointwise(CUDNN_POINTWISE_GEN_INDEX, x, nullptr, g.virt(L.s(), CUDNN_DATA_INT32),
                                CUDNN_DATA_FLOAT, nullptr, 2);
  const Desc& col = g.pointwise(CUDNN_POINTWISE_GEN_INDEX, x, nullptr, g.virt(L.s(), CUDNN_DATA_INT32),
                                CUDNN_DATA_FLOAT, nullptr, 3);
  const Desc& keep =
      g.pointwise(CUDNN_POINTWISE_CMP_GE, row, &col, g.virt(L.s(), CUDNN_DATA_BOOLEAN), CUDNN_DATA_BOOLEAN);
  return g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, x, &neg_inf, g.virt(L.s()), CUDNN_DATA_FLOAT, &keep);
}

// out = a · b summed over each group of H/KVH query heads: cuDNN reduces the per-query-head
// products (virtual, bf16) itself when the heads are grouped.
void group_matmul(Graph& g, const Layout& L, const Desc& a, const Desc& b, const Desc& out) {
  if (L.H == L.KVH) {
    g.matmul(a, b, out);
    return;
  }
  const Dims full = {L.B, L.H, L.T, L.hd};
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, g.matmul(a, b, g.virt(full, CUDNN_DATA_BFLOAT16)), out);
}

void build_forward(Graph& g, const Layout& L) {
  const Desc& q = g.tensor(L.q(), packed(L.q()), CUDNN_DATA_BFLOAT16, kQ);
  const Desc& kt = g.tensor(L.kt(), L.kt_strides(), CUDNN_DATA_BFLOAT16, kK);
  const Desc& v = g.tensor(L.kv(), packed(L.kv()), CUDNN_DATA_BFLOAT16, kV);
  const Desc& o = g.tensor(L.q(), L.merged_strides(), CUDNN_DATA_BFLOAT16, kO);
  const Desc& stats = g.tensor(L.row(), packed(L.row()), CUDNN_DATA_FLOAT, kStats);
  const Desc& s = masked_scores(g, L, q, kt, g.scalar(kScale), g.scalar(kNegInf), nullptr);
  // Softmax with stats = max + log Σ exp(s − max); P in bf16 for the second product.
  const Desc& mx = g.reduction(CUDNN_REDUCE_TENSOR_MAX, s, g.virt(L.row()));
  const Desc& e = g.pointwise(CUDNN_POINTWISE_EXP, g.pointwise(CUDNN_POINTWISE_SUB, s, &mx, g.virt(L.s())), nullptr,
                              g.virt(L.s()));
  const Desc& sum = g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, g.virt(L.row()));
  g.pointwise(CUDNN_POINTWISE_ADD, mx, &g.pointwise(CUDNN_POINTWISE_LOG, sum, nullptr, g.virt(L.row())), stats);
  const Desc& p = g.pointwise(CUDNN_POINTWISE_DIV, e, &sum, g.virt(L.s(), CUDNN_DATA_BFLOAT16));
  g.matmul(p, v, o);
}

void build_backward(Graph& g, const Layout& L) {
  const Desc& q = g.tensor(L.q(), packed(L.q()), CUDNN_DATA_BFLOAT16, kQ);
  const Desc& kt = g.tensor(L.kt(), L.kt_strides(), CUDNN_DATA_BFLOAT16, kK);
  const Desc& vt = g.tensor(L.kt(), L.kt_strides(), CUDNN_DATA_BFLOAT16, kV);
  const Desc& o = g.tensor(L.q(), L.merged_strides(), CUDNN_DATA_BFLOAT16, kO);
  const Desc& dout = g.tensor(L.q(), L.merged_strides(), CUDNN_DATA_BFLOAT16, kDO);
  const Desc& stats = g.tensor(L.row(), packed(L.row()), CUDNN_DATA_FLOAT, kStats);
  const Desc& dq = g.tensor(L.q(), packed(L.q()), CUDNN_DATA_BFLOAT16, kDQ);
  const Desc& dk = g.tensor(L.kv(), packed(L.kv()), CUDNN_DATA_BFLOAT16, kDK);
  const Desc& dv = g.tensor(L.kv(), packed(L.kv()), CUDNN_DATA_BFLOAT16, kDV);
  const Desc& scale = g.scalar(kScale);
  // D = rowsum(dO ∘ O), kept in the workspace (the backward pattern stores it, ×1).
  const Desc& softmax_sum = g.tensor(L.row(), packed(L.row()), CUDNN_DATA_FLOAT, kSoftmaxSum);
  const Desc& d = g.reduction(CUDNN_REDUCE_TENSOR_ADD,
                              g.pointwise(CUDNN_POINTWISE_MUL, dout, &o, g.virt(L.q())), g.virt(L.row()));
  g.pointwise(CUDNN_POINTWISE_MUL, d, &g.scalar(kOne), softmax_sum);
  // P = exp(S − stats); dV = Pᵀ·dO.
  const Desc& p = g.pointwise(CUDNN_POINTWISE_EXP, masked_scores(g, L, q, kt, scale, g.scalar(kNegInf), &stats),
                              nullptr, g.virt(L.s()));
  group_matmul(g, L, g.reshape(p, g.tensor(L.s(), L.st_strides(), CUDNN_DATA_BFLOAT16)), dout, dv);
  // dS = P ∘ (dO·Vᵀ − D) · scale; dK = dSᵀ·Q.
  const Desc& dp = g.matmul(dout, vt, g.virt(L.s()));
  const Desc& ds = g.pointwise(
      CUDNN_POINTWISE_MUL,
      g.pointwise(CUDNN_POINTWISE_MUL, g.pointwise(CUDNN_POINTWISE_SUB, dp, &softmax_sum, g.virt(L.s())), &p,
                  g.virt(L.s())),
      &scale, g.virt(L.s()));
  group_matmul(g, L, g.reshape(ds, g.tensor(L.s(), L.st_strides(), CUDNN_DATA_BFLOAT16)), q, dk);
  // dQ = dS·K into an fp32 accumulator in the workspace, then cast.
  const Desc& k = g.reshape(kt, g.tensor(L.kv(), packed(L.kv()), CUDNN_DATA_BFLOAT16));
  const Desc& dq_acc = g.tensor(L.q(), packed(L.q()), CUDNN_DATA_FLOAT, kDQAccum);
  g.pointwise(CUDNN_POINTWISE_IDENTITY, g.matmul(ds, k, dq_acc), nullptr, dq);
}

// Per device: the handle and the cached plans; the workspace is one DeviceScratch for all.
struct DeviceState {
  cudnnHandle_t handle = nullptr;
  std::map<std::array<int, 6>, std::unique_ptr<Graph>> plans;  // {B, T, H, KVH, hd, backward}
};
std::mutex g_mutex;
std::map<int, DeviceState> g_devices;
DeviceScratch g_workspace("cuDNN attention workspace");

void check_cuda(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess) throw_cuda_error(e, ("cuDNN attention: " + what).c_str(), __FILE__, __LINE__);
}

std::string shape_name(const char* dir, int B, int T, int H, int KVH, int hd) {
  return std::string(dir) + " B=" + std::to_string(B) + " T=" + std::to_string(T) + " H=" + std::to_string(H) +
         " KVH=" + std::to_string(KVH) + " hd=" + std::to_string(hd);
}

// The device's state (handle created on first use) with the cached plan for this call; the
// caller holds g_mutex.
std::pair<DeviceState*, const Graph*> plan_for(bool backward, int B, int T, int H, int KVH, int hd,
                                               cudaStream_t stream) {
  const std::string where = shape_name(backward ? "backward" : "forward", B, T, H, KVH, hd);
  if (const char* why = cudnn_attention_unsupported(B, T, H, KVH, hd); *why)
    throw Error("cuDNN attention (" + where + "): unsupported shape: " + why);
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  DeviceState& st = g_devices[dev];
  if (!st.handle) {
    const cudnnStatus_t s = cudnnCreate(&st.handle);
    if (s != CUDNN_STATUS_SUCCESS) Desc::fail(where, "cudnnCreate", s);
  }
  if (const cudnnStatus_t s = cudnnSetStream(st.handle, stream); s != CUDNN_STATUS_SUCCESS)
    Desc::fail(where, "cudnnSetStream", s);
  auto& slot = st.plans[{B, T, H, KVH, hd, backward ? 1 : 0}];
  if (!slot) {
    auto g = std::make_unique<Graph>(where);
    const Layout L{B, T, H, KVH, hd};
    if (backward)
      build_backward(*g, L);
    else
      build_forward(*g, L);
    g->build(st.handle);
    slot = std::move(g);
  }
  return {&st, slot.get()};
}

char* workspace(size_t bytes) { return static_cast<char*>(g_workspace.get(bytes)); }

size_t round_up(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

const char* cudnn_attention_unsupported(int B, int T, int H, int KVH, int hd) {
  if (B < 1 || T < 1 || H < 1 || KVH < 1) return "B, T, H and KVH must be positive";
  if (H % KVH != 0) return "H must be a multiple of KVH";
  if (hd % 8 != 0 || hd < 8 || hd > 256) return "hd must be a multiple of 8 in [8, 256]";
  return "";
}

void cudnn_attention_forward(void* out, float* lse, const void* q, const void* k, const void* v, int B, int T,
                             int H, int KVH, int hd, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto [st, plan] = plan_for(false, B, T, H, KVH, hd, stream);
  float scale = 1.0f / std::sqrt(float(hd)), neg_inf = -std::numeric_limits<float>::infinity();
  void* ws = workspace(plan->workspace_bytes());
  plan->execute(st->handle, {kQ, kK, kV, kO, kStats, kScale, kNegInf},
                {const_cast<void*>(q), const_cast<void*>(k), const_cast<void*>(v), out, lse, &scale, &neg_inf}, ws);
}

void cudnn_attention_backward(void* dq, float* dk, float* dv, const void* dout, const void* q, const void* k,
                              const void* v, const void* out, const float* lse, int B, int T, int H, int KVH,
                              int hd, bool accumulate, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto [st, plan] = plan_for(true, B, T, H, KVH, hd, stream);
  // Workspace: cuDNN's own, then D [B, H, T] and the dq accumulator [B, H, T, hd] (fp32), then
  // this layer's dK and dV [B, KVH, T, hd] (bf16) before they join the fp32 group sums.
  const size_t n_kv = size_t(B) * KVH * T * hd;
  const size_t off_sum = round_up(plan->workspace_bytes());
  const size_t off_dq = off_sum + round_up(size_t(B) * H * T * 4);
  const size_t off_dk = off_dq + round_up(size_t(B) * H * T * hd * 4);
  const size_t off_dv = off_dk + round_up(n_kv * 2);
  char* ws = workspace(off_dv + round_up(n_kv * 2));
  float scale = 1.0f / std::sqrt(float(hd)), neg_inf = -std::numeric_limits<float>::infinity(), one = 1.0f;
  plan->execute(st->handle,
                {kQ, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV, kScale, kNegInf, kOne, kSoftmaxSum, kDQAccum},
                {const_cast<void*>(q), const_cast<void*>(k), const_cast<void*>(v), const_cast<void*>(out),
                 const_cast<float*>(lse), const_cast<void*>(dout), dq, ws + off_dk, ws + off_dv, &scale, &neg_inf,
                 &one, ws + off_sum, ws + off_dq},
                ws);
  const auto to_f32 = accumulate ? add_bf16_to_f32 : cast_bf16_to_f32;
  to_f32(dk, reinterpret_cast<const bf16*>(ws + off_dk), int64_t(n_kv), stream);
  to_f32(dv, reinterpret_cast<const bf16*>(ws + off_dv), int64_t(n_kv), stream);
}

void cudnn_attention_release() {
  std::lock_guard<std::mutex> lock(g_mutex);
  int current = 0;
  check_cuda(cudaGetDevice(&current), "cudaGetDevice");
  for (auto& [dev, st] : g_devices) {
    check_cuda(cudaSetDevice(dev), "cudaSetDevice");
    st.plans.clear();
    if (st.handle) cudnnDestroy(st.handle);
  }
  g_devices.clear();
  check_cuda(cudaSetDevice(current), "cudaSetDevice");
  g_workspace.release();
}

std::string cudnn_attention_library_version() {
  const size_t v = cudnnGetVersion();  // major·10000 + minor·100 + patch since cuDNN 9
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

}  // namespace mlkv::cuda
#endif  // MLKV_HAVE_CUDNN
