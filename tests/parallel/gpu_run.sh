#!/usr/bin/env bash
# The 2-GPU measurements of parallel/README.md, in one go on a GPU host (nvidia-h200-x2):
# CUDA build, the NCCL equivalence tests (bf16 tolerances), 1-GPU vs 2-GPU loss tracking, DP
# scaling (160M, 1B), tp=2 per-GPU throughput (1B) and optimizer-state memory per rank.
#   OUT=dir tests/parallel/gpu_run.sh        logs: run.log, build.log, info.txt, results.txt
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 NCCL_DEBUG=WARN
L=$OUT/run.log
log() { echo "== $(date -u +%T) $*" | tee -a "$L"; }
{ date -u; nvidia-smi -L; nvidia-smi topo -m; nproc; } >"$OUT/info.txt" 2>&1
# PREBUILT=dir: binaries built elsewhere (same CUDA 13 / Open MPI 4 / NCCL 2 sonames), when they load.
if [ -n "${PREBUILT:-}" ] && ! ldd "$PREBUILT/mlkv-bench-parallel" "$PREBUILT/test_parallel_mpi" | grep -q "not found"; then
  log "prebuilt binaries from $PREBUILT"
  mkdir -p build-gpu/bin build-gpu/tests/parallel
  cp "$PREBUILT/mlkv-bench-parallel" build-gpu/bin/
  cp "$PREBUILT/test_parallel_mpi" build-gpu/tests/parallel/
else
log build
if ! cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMLKV_DEPS_ROOT="$PWD/.deps/root" \
       -DCMAKE_CUDA_ARCHITECTURES=90 >"$OUT/build.log" 2>&1 ||
   ! timeout "${BUILD_TIMEOUT:-330}" ninja -C build-gpu -j"$(nproc)" test_parallel_mpi mlkv-bench-parallel >>"$OUT/build.log" 2>&1; then
  log "build failed"
  tail -40 "$OUT/build.log"
  exit 1
fi
fi
log built
MPI=(mpirun -np 2 --allow-run-as-root --bind-to none --mca btl self,vader --mca btl_vader_single_copy_mechanism none
     -x NCCL_NVLS_ENABLE -x NCCL_DEBUG -x MLKV_TEST_BACKEND)
export MLKV_TEST_BACKEND=cuda
# PHASES: which measurements (default all): equiv track scale160 scale1b tp1b accum1b tptrack
PHASES=${PHASES:-"equiv track scale160 scale1b tp1b accum1b tptrack"}
has() { [[ " $PHASES " == *" $1 "* ]]; }
if has equiv; then
  log "equivalence (NCCL, bf16)"
  timeout 150 "${MPI[@]}" build-gpu/tests/parallel/test_parallel_mpi \
    --gtest_filter='DataParallel.Zero1*:DataParallel.AllReduce*:Plans/TensorParallel.Tp2*:TensorParallelReplicas.*:Checkpoint.*' \
    >>"$L" 2>&1
  log "equivalence rc=$?"
fi
B=build-gpu/bin/mlkv-bench-parallel
bench() {
  local np=$1
  shift
  log "bench np=$np $*"
  if [ "$np" = 1 ]; then timeout 120 "$B" "$@" >>"$L" 2>&1; else timeout 150 "${MPI[@]}" "$B" "$@" >>"$L" 2>&1; fi
  log "rc=$?"
}
C160=configs/pythia160m_mlkv6.toml
C1B=configs/pythia1b_mlkv.toml
# Loss tracking: the same 16 sequences of 1024 tokens per step, as 2 micro-batches on 1 GPU or
# one per GPU on 2 (dp); and 8 sequences on 1 GPU vs tp = 2.
T=(--set train.seq_len=1024 --set train.micro_batch=8 --steps 40 --warmup 0 --losses --pattern
   --set optim.warmup_steps=5 --set optim.lr=6e-4)
if has track; then
  bench 1 $C160 "${T[@]}" --set train.grad_accum=2
  bench 2 $C160 "${T[@]}" --set train.grad_accum=1
fi
if has tptrack; then
  bench 1 $C160 "${T[@]}" --set train.grad_accum=1
  bench 2 $C160 "${T[@]}" --set train.grad_accum=1 --set parallel.tp=2
fi
# Throughput: one micro-batch per step (a gradient reduction every micro-batch: the hard case).
S=(--steps 6 --warmup 2 --fast-init --set train.grad_accum=1)
if has scale160; then
  bench 1 $C160 "${S[@]}" --set train.micro_batch=16
  bench 2 $C160 "${S[@]}" --set train.micro_batch=16
fi
if has scale1b; then
  bench 1 $C1B "${S[@]}" --set train.micro_batch=8
  bench 2 $C1B "${S[@]}" --set train.micro_batch=8
  bench 2 $C1B "${S[@]}" --set train.micro_batch=8 --set parallel.zero1=false
fi
if has tp1b; then
  has scale1b || bench 1 $C1B "${S[@]}" --set train.micro_batch=8
  bench 2 $C1B "${S[@]}" --set train.micro_batch=8 --set parallel.tp=2
fi
if has accum1b; then  # 4 micro-batches per step: the reduction overlaps the last one's backward
  bench 1 $C1B --steps 3 --warmup 1 --fast-init --set train.micro_batch=8 --set train.grad_accum=4
  bench 2 $C1B --steps 3 --warmup 1 --fast-init --set train.micro_batch=8 --set train.grad_accum=4
fi
grep RESULT "$L" >"$OUT/results.txt"
log done
