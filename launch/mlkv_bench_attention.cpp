// mlkv-bench-attention: times our MLKV flash-attention forward and backward (kernels/cuda/
// attention.h) on attention shapes (B, H, KVH, T, hd), causal, bf16, and prints one row per shape:
// median ms of the forward, of the backward, their sum, and TFLOP/s by the FlashAttention
// convention (forward 4·B·H·T²·hd / 2 for causal, backward 2.5× that), so the numbers line up
// with torch SDPA's (scripts/bench_attention.sh runs both on the same shapes). Built with cuDNN,
// the same row also times our cuDNN SDPA backend (kernels/cuda/cudnn_attention.h) on the same
// inputs: the backward contract (dK/dV as fp32 sums) included. The backward assigns dK/dV, as the
// trainer's call for an MHA layer or the first layer of an MLKV group does; --accumulate times
// the calls of the group's other layers (added into the sums).
//
//   mlkv-bench-attention [--shapes "B,H,KVH,T,hd;..."] [--iters N] [--csv FILE] [--mma] [--lockstep-fwd]
//                        [--two-kernel-bwd] [--accumulate]
// --mma forces the portable mma.sync kernels instead of the Hopper wgmma ones; --lockstep-fwd the
// lockstep wgmma forward instead of the warp-specialised one (MLKV_ATTN_PINGPONG=0 turns the
// latter's ping-pong off); --two-kernel-bwd the two-kernel wgmma backward instead of the
// warp-specialised one.
#ifdef MLKV_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/errors.h"
#include "kernels/cuda/attention.h"
#ifdef MLKV_HAVE_CUDNN
#include "kernels/cuda/cudnn_attention.h"
#endif

namespace {

struct Shape {
  int B, H, KVH, T, hd;
};

// One attention implementation: the attention.h pair or the cudnn_attention.h pair.
struct Impl {
  void (*fwd)(void*, float*, const void*, const void*, const void*, int, int, int, int, int, cudaStream_t);
  void (*bwd)(void*, float*, float*, const void*, const void*, const void*, const void*, const void*, const float*,
              int, int, int, int, int, bool, cudaStream_t);
};

// The peer shapes of shared/gpu-host/README.md, then MLKV shapes (fewer KV heads per layer).
const char* kDefaultShapes =
    "16,12,12,2048,64;16,12,1,2048,64;8,8,8,2048,256;4,32,32,2048,80;2,16,16,8192,128;"
    "16,12,2,2048,64;16,12,4,2048,64;8,8,1,2048,256;8,8,2,2048,256;4,32,4,2048,80;2,16,1,8192,128";

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw mlkv::Error(std::string(what) + ": " + cudaGetErrorString(e));
}

std::vector<Shape> parse_shapes(const std::string& text) {
  std::vector<Shape> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ';')) {
    if (item.empty()) continue;
    Shape s{};
    if (std::sscanf(item.c_str(), "%d,%d,%d,%d,%d", &s.B, &s.H, &s.KVH, &s.T, &s.hd) != 5)
      throw mlkv::ConfigError("--shapes: cannot read '" + item + "' as B,H,KVH,T,hd");
    out.push_back(s);
  }
  return out;
}

// Random bf16 in about [-2, 2) (never zeros: zeros time faster than real data).
void fill_random(void* dev, size_t n, uint64_t seed) {
  std::vector<uint16_t> h(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    const float f = (float((x >> 40) & 0xffffff) / float(1 << 24)) * 4.f - 2.f;
    uint32_t u;
    std::memcpy(&u, &f, 4);
    h[i] = uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  check(cudaMemcpy(dev, h.data(), n * 2, cudaMemcpyHostToDevice), "cudaMemcpy");
}

template <typename F>
float median_ms(F&& f, int iters) {
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "cudaEventCreate");
  check(cudaEventCreate(&b), "cudaEventCreate");
  for (int i = 0; i < 3; ++i) f();  // warm-up: module load, smem opt-in, workspace growth
  std::vector<float> ms;
  for (int i = 0; i < iters; ++i) {
    check(cudaEventRecord(a), "cudaEventRecord");
    f();
    check(cudaEventRecord(b), "cudaEventRecord");
    check(cudaEventSynchronize(b), "cudaEventSynchronize");
    float t = 0;
    check(cudaEventElapsedTime(&t, a, b), "cudaEventElapsedTime");
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string shapes = kDefaultShapes, csv;
  int iters = 20;
  bool accumulate = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--shapes" && i + 1 < argc) shapes = argv[++i];
    else if (a == "--iters" && i + 1 < argc) iters = std::max(1, std::atoi(argv[++i]));
    else if (a == "--csv" && i + 1 < argc) csv = argv[++i];
    else if (a == "--mma") mlkv::cuda::attention_use_sm90(false);
    else if (a == "--lockstep-fwd") mlkv::cuda::attention_use_ws_forward(false);
    else if (a == "--two-kernel-bwd") mlkv::cuda::attention_use_ws_backward(false);
    else if (a == "--accumulate") accumulate = true;
    else {
      std::fprintf(stderr,
                   "usage: %s [--shapes \"B,H,KVH,T,hd;...\"] [--iters N] [--csv FILE] [--mma] [--lockstep-fwd] "
                   "[--two-kernel-bwd] [--accumulate]\n",
                   argv[0]);
      return mlkv::kExitBadInput;
    }
  }
  try {
    std::vector<Impl> impls = {{mlkv::cuda::attention_forward, mlkv::cuda::attention_backward}};
#ifdef MLKV_HAVE_CUDNN
    impls.push_back({mlkv::cuda::cudnn_attention_forward, mlkv::cuda::cudnn_attention_backward});
#endif
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    std::printf("mlkv-bench-attention on %s, %s kernels, causal bf16, median of %d\n", prop.name,
                mlkv::cuda::attention_sm90_active() ? "sm90 wgmma" : "mma.sync", iters);
    std::printf("forward at hd 64: %s; at hd 80/128/256: %s\n", mlkv::cuda::attention_forward_kernel(64),
                mlkv::cuda::attention_forward_kernel(128));
    std::printf("backward at hd 64/128/256: %s; at hd 80: %s (MHA), %s (grouped); dK/dV %s\n",
                mlkv::cuda::attention_backward_kernel(64, 1), mlkv::cuda::attention_backward_kernel(80, 1),
                mlkv::cuda::attention_backward_kernel(80, 2), accumulate ? "added into fp32 sums" : "assigned (fp32)");
#ifdef MLKV_HAVE_CUDNN
    std::printf("our cuDNN SDPA backend: cuDNN %s at run time\n",
                mlkv::cuda::cudnn_attention_library_version().c_str());
#endif
    std::printf("%-22s %9s %9s %9s %8s %8s", "B,H,KVH,T,hd", "fwd ms", "bwd ms", "total", "fwd TF/s", "bwd TF/s");
    if (impls.size() > 1) std::printf(" | %9s %9s %9s", "cuDNN fwd", "cuDNN bwd", "total");
    std::printf("\n");
    std::ofstream csv_out;
    if (!csv.empty()) {
      csv_out.open(csv);
      csv_out << "B,H,KVH,T,hd,fwd_ms,bwd_ms" << (impls.size() > 1 ? ",cudnn_fwd_ms,cudnn_bwd_ms" : "") << "\n";
    }
    for (const Shape& s : parse_shapes(shapes)) {
      const size_t nq = size_t(s.B) * s.H * s.T * s.hd, nkv = size_t(s.B) * s.KVH * s.T * s.hd;
      const size_t nvec = size_t(s.B) * s.H * s.T;
      void *q, *k, *v, *out, *dout, *dq;
      float *lse, *dk, *dv;
      check(cudaMalloc(&q, nq * 2), "cudaMalloc");
      check(cudaMalloc(&k, nkv * 2), "cudaMalloc");
      check(cudaMalloc(&v, nkv * 2), "cudaMalloc");
      check(cudaMalloc(&out, nq * 2), "cudaMalloc");
      check(cudaMalloc(&dout, nq * 2), "cudaMalloc");
      check(cudaMalloc(&dq, nq * 2), "cudaMalloc");
      check(cudaMalloc(reinterpret_cast<void**>(&lse), nvec * 4), "cudaMalloc");
      check(cudaMalloc(reinterpret_cast<void**>(&dk), nkv * 4), "cudaMalloc");
      check(cudaMalloc(reinterpret_cast<void**>(&dv), nkv * 4), "cudaMalloc");
      fill_random(q, nq, 1);
      fill_random(k, nkv, 2);
      fill_random(v, nkv, 3);
      fill_random(dout, nq, 4);
      check(cudaMemset(dk, 0, nkv * 4), "cudaMemset");
      check(cudaMemset(dv, 0, nkv * 4), "cudaMemset");
      std::vector<float> ms;  // fwd, bwd per implementation; each backward follows its own forward
      for (const Impl& impl : impls) {
        ms.push_back(median_ms([&] { impl.fwd(out, lse, q, k, v, s.B, s.T, s.H, s.KVH, s.hd, nullptr); }, iters));
        ms.push_back(median_ms(
            [&] { impl.bwd(dq, dk, dv, dout, q, k, v, out, lse, s.B, s.T, s.H, s.KVH, s.hd, accumulate, nullptr); },
            iters));
        check(cudaDeviceSynchronize(), "attention kernels");
      }
      const double fwd_flop = 4.0 * s.B * s.H * double(s.T) * s.T * s.hd / 2;
      char name[64];
      std::snprintf(name, sizeof name, "%d,%d,%d,%d,%d", s.B, s.H, s.KVH, s.T, s.hd);
      std::printf("%-22s %9.3f %9.3f %9.3f %8.1f %8.1f", name, ms[0], ms[1], ms[0] + ms[1], fwd_flop / ms[0] * 1e-9,
                  2.5 * fwd_flop / ms[1] * 1e-9);
      if (impls.size() > 1) std::printf(" | %9.3f %9.3f %9.3f", ms[2], ms[3], ms[2] + ms[3]);
      std::printf("\n");
      std::fflush(stdout);
      if (csv_out) {
        csv_out << name;
        for (float t : ms) csv_out << "," << t;
        csv_out << "\n";
      }
      for (void* p : {q, k, v, out, dout, dq, static_cast<void*>(lse), static_cast<void*>(dk), static_cast<void*>(dv)})
        cudaFree(p);
    }
  } catch (const mlkv::Error& e) {
    std::fprintf(stderr, "mlkv-bench-attention: %s\n", e.what());
    return e.exit_code();
  }
  return mlkv::kExitOk;
}

#else
#include <cstdio>

int main() {
  std::fprintf(stderr, "mlkv-bench-attention: built without CUDA\n");
  return 1;
}
#endif
