// Linear layers through cuBLASLt: bf16 operands, fp32 accumulation (CUBLAS_COMPUTE_32F).
//   forward:          out[N, OC] (=/+=) in[N, IC] · w[OC, IC]^T + bias   (BIAS epilogue, bf16 out)
//   backward input:   din[N, IC] (=/+=) dout[N, OC] · w                   (bf16 out)
//   backward weight:  dw[OC, IC] += dout^T · in                           (fp32 C = D, beta 1)
//                     and dbias[OC] += Σ_n dout   (BGRADB epilogue into an fp32 vector, then added)
// cuBLASLt is column-major: a row-major [R, C] buffer is the column-major C×R matrix, so each
// row-major product is issued transposed (D^T = op(B)^T·op(A)^T), which needs no data movement.
// Descriptors and the algorithm are chosen once per shape and cached: a training step repeats the
// same few dozen shapes, and the heuristic query costs more than a small GEMM. The heuristic's
// first choice is not always good (measured: the 32768×768→2304 QKV projection ran at 214 TFLOP/s
// against 670 for its 3072-wide neighbour), so its top candidates are timed once on the real
// operands and the fastest kept. MLKV_GEMM_AUTOTUNE=0 keeps the heuristic's first choice instead
// (then the choice, and so the summation order, cannot vary between runs).
#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>

#include <algorithm>

#include "core/env.h"
#include "core/errors.h"
#include "kernels/cuda/backend_ops.cuh"

namespace mlkv::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;
constexpr int kCandidates = 8;
// Largest output copied aside to time an accumulating (beta = 1) GEMM without disturbing it.
constexpr size_t kMaxTuneScratch = size_t{512} << 20;

bool autotune_enabled() { return env_switch("MLKV_GEMM_AUTOTUNE") != 0; }
// MLKV_GEMM_BGRAD=1: bias gradients in the weight GEMM's BGRADB epilogue. Off by default: on one
// H200 (2026-12-02, 160M MHA mb 16) it measured no faster than the column-sum pass (477.2K vs
// 480.6K tokens/s, one run each), so the plainer path stays the default.
bool bgrad_enabled() {
  static const bool on = env_switch("MLKV_GEMM_BGRAD") == 1;
  return on;
}

// What the epilogue adds: nothing, a bf16 bias vector, or the bias gradient (Σ over k of B).
enum class Epi { none, bias, bgrad_b };

// Largest power of two ≤ 16 dividing the address: the heuristic must know what it may assume.
int alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  int al = 16;
  while (al > 1 && (a % al) != 0) al >>= 1;
  return al;
}

struct Key {
  cublasOperation_t ta, tb;
  int64_t m, n, k, lda, ldb, ldd;
  cudaDataType_t dtype;
  Epi epi;
  int align_a, align_b, align_d;
  auto tie() const { return std::tie(ta, tb, m, n, k, lda, ldb, ldd, dtype, epi, align_a, align_b, align_d); }
  bool operator<(const Key& o) const { return tie() < o.tie(); }
};

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

}  // namespace

struct Gemm::Impl {
  cudaStream_t stream;
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::map<Key, Plan> plans;
  std::map<Key, bool> unsupported;  // keys whose epilogue no algorithm takes (optional epilogues only)
  float* bgrad = nullptr;           // the BGRADB epilogue's output, added into the caller's dbias
  int64_t bgrad_elems = 0;

  explicit Impl(cudaStream_t s) : stream(s) {
    MLKV_CUBLAS_CHECK(cublasLtCreate(&handle));
    MLKV_CUDA_CHECK(cudaMallocAsync(&workspace, kWorkspaceBytes, stream));
  }
  ~Impl() {
    for (auto& [k, p] : plans) {
      cublasLtMatmulDescDestroy(p.op);
      cublasLtMatrixLayoutDestroy(p.a);
      cublasLtMatrixLayoutDestroy(p.b);
      cublasLtMatrixLayoutDestroy(p.d);
    }
    cudaFreeAsync(workspace, stream);
    if (bgrad) cudaFreeAsync(bgrad, stream);
    cublasLtDestroy(handle);
  }

  // The plan for `key`; on first use the candidates are timed on these operands. With
  // `optional`, null when no algorithm takes the key's epilogue (remembered) instead of throwing.
  const Plan* plan(const Key& key, const void* A, const void* Bm, void* D, float beta, const void* bias,
                   bool optional) {
    auto it = plans.find(key);
    if (it != plans.end()) return &it->second;
    if (optional && unsupported.count(key)) return nullptr;
    Plan p;
    MLKV_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    MLKV_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &key.ta, sizeof(key.ta)));
    MLKV_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &key.tb, sizeof(key.tb)));
    if (key.epi != Epi::none) {
      const bool grad = key.epi == Epi::bgrad_b;
      const cublasLtEpilogue_t epi = grad ? CUBLASLT_EPILOGUE_BGRADB : CUBLASLT_EPILOGUE_BIAS;
      const cudaDataType_t bt = grad ? CUDA_R_32F : CUDA_R_16BF;
      MLKV_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
      MLKV_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
      MLKV_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    }
    // Stored (pre-op) shapes: A is m×k or k×m, B is k×n or n×k, D is m×n.
    const bool ta = key.ta == CUBLAS_OP_T, tb = key.tb == CUBLAS_OP_T;
    MLKV_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, ta ? key.k : key.m, ta ? key.m : key.k, key.lda));
    MLKV_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, tb ? key.n : key.k, tb ? key.k : key.n, key.ldb));
    MLKV_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.d, key.dtype, key.m, key.n, key.ldd));

    cublasLtMatmulPreference_t pref;
    MLKV_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = kWorkspaceBytes;
    const uint32_t al_a = key.align_a, al_b = key.align_b, al_d = key.align_d;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof(al_d));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d));
    cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(handle, p.op, p.a, p.b, p.d, p.d, pref, kCandidates, results, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
      cublasLtMatmulDescDestroy(p.op);
      cublasLtMatrixLayoutDestroy(p.a);
      cublasLtMatrixLayoutDestroy(p.b);
      cublasLtMatrixLayoutDestroy(p.d);
      if (optional) {
        unsupported[key] = true;
        return nullptr;
      }
      throw Error("cuBLASLt: no algorithm for m=" + std::to_string(key.m) + " n=" + std::to_string(key.n) +
                  " k=" + std::to_string(key.k) + " (status " + std::to_string(static_cast<int>(st)) + ")");
    }
    p.algo = results[0].algo;
    if (found > 1 && autotune_enabled()) p.algo = fastest(p, results, found, key, A, Bm, D, beta);
    return &plans.emplace(key, p).first->second;
  }

  // Times each candidate (one warm-up, best of three) and returns the fastest. An accumulating
  // GEMM writes into a scratch copy-target instead, so the caller's output is left untouched.
  cublasLtMatmulAlgo_t fastest(const Plan& p, const cublasLtMatmulHeuristicResult_t* results, int found, const Key& key,
                               const void* A, const void* Bm, void* D, float beta) {
    void* target = D;
    if (beta != 0.0f) {
      const size_t bytes = size_t(key.m) * key.n * (key.dtype == CUDA_R_32F ? 4 : 2);
      if (bytes > kMaxTuneScratch || cudaMallocAsync(&target, bytes, stream) != cudaSuccess) {
        cudaGetLastError();
        return results[0].algo;
      }
    }
    cudaEvent_t t0, t1;
    MLKV_CUDA_CHECK(cudaEventCreate(&t0));
    MLKV_CUDA_CHECK(cudaEventCreate(&t1));
    const float alpha = 1.0f;
    int best = 0;
    float best_ms = 1e30f;
    for (int i = 0; i < found; ++i) {
      auto launch = [&] {
        return cublasLtMatmul(handle, p.op, &alpha, A, p.a, Bm, p.b, &beta, target, p.d, target, p.d,
                              &results[i].algo, workspace, kWorkspaceBytes, stream);
      };
      if (launch() != CUBLAS_STATUS_SUCCESS) continue;
      float ms_min = 1e30f;
      for (int r = 0; r < 3; ++r) {
        MLKV_CUDA_CHECK(cudaEventRecord(t0, stream));
        launch();
        MLKV_CUDA_CHECK(cudaEventRecord(t1, stream));
        MLKV_CUDA_CHECK(cudaEventSynchronize(t1));
        float ms = 0;
        MLKV_CUDA_CHECK(cudaEventElapsedTime(&ms, t0, t1));
        ms_min = std::min(ms_min, ms);
      }
      if (ms_min < best_ms) best_ms = ms_min, best = i;
    }
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    if (target != D) MLKV_CUDA_CHECK(cudaFreeAsync(target, stream));
    return results[best].algo;
  }

  // D = op(A)·op(B) (+ beta·D) (+ the epilogue's bias, or its bias gradient written to `bias`),
  // D used as C too. False only for an optional epilogue that no algorithm takes (nothing ran).
  bool run(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, const bf16* A, int64_t lda,
           const bf16* Bm, int64_t ldb, void* D, int64_t ldd, cudaDataType_t dtype, float beta, const void* bias,
           Epi epi = Epi::none) {
    if (m == 0 || n == 0) return true;
    if (bias && epi == Epi::none) epi = Epi::bias;
    const Key key{ta, tb, m, n, k, lda, ldb, ldd, dtype, epi, alignment_of(A), alignment_of(Bm), alignment_of(D)};
    const Plan* p = plan(key, A, Bm, D, beta, bias, epi == Epi::bgrad_b);
    if (!p) return false;
    if (bias)
      MLKV_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    const float alpha = 1.0f;
    MLKV_CUBLAS_CHECK(cublasLtMatmul(handle, p->op, &alpha, A, p->a, Bm, p->b, &beta, D, p->d, D, p->d, &p->algo,
                                     workspace, kWorkspaceBytes, stream));
    return true;
  }

  float* bgrad_buffer(int64_t elems) {
    if (elems > bgrad_elems) {
      if (bgrad) MLKV_CUDA_CHECK(cudaFreeAsync(bgrad, stream));
      bgrad = nullptr;
      bgrad_elems = 0;
      MLKV_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&bgrad), elems * sizeof(float), stream));
      bgrad_elems = elems;
    }
    return bgrad;
  }
};

Gemm::Gemm(cudaStream_t s) : impl_(std::make_unique<Impl>(s)) {}
Gemm::~Gemm() = default;

// out^T (OC×N) = w_cm^T (w_cm is IC×OC) · in_cm (IC×N)
void Gemm::forward(bf16* out, const bf16* in, const bf16* w, const bf16* bias, int64_t N, int IC, int OC,
                   bool accumulate) {
  impl_->run(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC, w, IC, in, IC, out, OC, CUDA_R_16BF, accumulate ? 1.0f : 0.0f,
             bias);
}

// din^T (IC×N) = w_cm (IC×OC) · dout_cm (OC×N)
void Gemm::backward_input(bf16* din, const bf16* dout, const bf16* w, int64_t N, int IC, int OC, bool accumulate) {
  impl_->run(CUBLAS_OP_N, CUBLAS_OP_N, IC, N, OC, w, IC, dout, OC, din, IC, CUDA_R_16BF, accumulate ? 1.0f : 0.0f,
             nullptr);
}

// dw^T (IC×OC) += in_cm (IC×N) · dout_cm^T (N×OC). B = dout_cm^T has OC columns and k = N rows,
// so BGRADB's Σ over k is the bias gradient. The epilogue writes (not adds) it, into an fp32
// vector that one small pass adds onto dbias, so the += contract holds across micro-batches.
bool Gemm::backward_weight(float* dw, float* dbias, const bf16* dout, const bf16* in, int64_t N, int IC, int OC) {
  if (dbias && bgrad_enabled() && N > 0) {
    float* tmp = impl_->bgrad_buffer(OC);
    if (impl_->run(CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, N, in, IC, dout, OC, dw, IC, CUDA_R_32F, 1.0f, tmp,
                   Epi::bgrad_b)) {
      add_partial_rows(dbias, nullptr, tmp, nullptr, 1, OC, impl_->stream);
      return true;
    }
  }
  impl_->run(CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, N, in, IC, dout, OC, dw, IC, CUDA_R_32F, 1.0f, nullptr);
  return !dbias;
}

}  // namespace mlkv::cuda
