#!/usr/bin/env bash
# One-GPU check on a GPU host (issue 6 item 5): CUDA build, the GPU test binaries, the README demo
# on the GPU, compute-sanitizer memcheck on the CUDA op tests, and a short training benchmark.
#   OUT=dir scripts/gpu_check.sh          PHASES="build tests demo memcheck bench" (default: all)
# Logs under $OUT: build.log, tests_*.log, demo.log, memcheck.log, bench.log, summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
BUILD=${BUILD:-build-gpu}
PHASES=${PHASES:-"build tests demo memcheck bench"}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
S=$OUT/summary.txt
log() { echo "== $(date -u +%T) $*" | tee -a "$S"; }
has() { [[ " $PHASES " == *" $1 "* ]]; }
{ date -u; nvidia-smi -L; } >>"$S" 2>&1

if has build; then
  log build
  if ! cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMLKV_DEPS_ROOT="$PWD/.deps/root" \
         >"$OUT/build.log" 2>&1 ||
     ! timeout "${BUILD_TIMEOUT:-360}" ninja -C "$BUILD" -j"$(nproc)" ${TARGETS:-} >>"$OUT/build.log" 2>&1; then
    log "build FAILED"
    tail -40 "$OUT/build.log"
    exit 1
  fi
  log built
fi

if has tests; then
  for t in cuda/test_cuda cuda_attention/test_cuda_attention trainer/test_trainer; do
    [ -x "$BUILD/tests/$t" ] || continue
    log "test $t"
    tl=$OUT/tests_$(basename "$t").log
    timeout 240 "$BUILD/tests/$t" --gtest_brief=1 >"$tl" 2>&1
    log "test $t rc=$?"
    grep -E "^\[  (PASSED|FAILED|SKIPPED) " "$tl" >>"$S"
  done
fi

if has demo; then
  log demo
  BUILD=$BUILD OUT=$OUT/demo timeout 120 bash scripts/demo.sh >"$OUT/demo.log" 2>&1
  log "demo rc=$?"
  tail -4 "$OUT/demo.log" >>"$S"
fi

if has memcheck; then
  # The op tests and one whole-model step; the 200-step curves add nothing memcheck would not see.
  log memcheck
  timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 "$BUILD/tests/cuda/test_cuda" \
    --gtest_filter="${MEMCHECK_FILTER:--*TwoHundred*}" --gtest_brief=1 >"$OUT/memcheck.log" 2>&1
  log "memcheck rc=$?"
  grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/memcheck.log" | tail -3 >>"$S"
  # The attention kernels (ours, both families, and the cuDNN path) on small uneven shapes that
  # cover every head dim and partial tiles; the large shapes take minutes under memcheck.
  timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 "$BUILD/tests/cuda_attention/test_cuda_attention" \
    --gtest_filter="${MEMCHECK_ATTN_FILTER:-*B2_T17_*:*B1_T257_*:*B1_T31_*:*B2_T77_*:*B2_T191_*}" --gtest_brief=1 \
    >"$OUT/memcheck_attention.log" 2>&1
  log "memcheck attention rc=$?"
  grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/memcheck_attention.log" | tail -3 >>"$S"
fi

if has bench; then
  log bench
  for c in configs/pythia160m_mha144.toml configs/pythia160m_mlkv6.toml; do
    [ -f "$c" ] || continue
    timeout 120 "$BUILD/bin/mlkv-bench" train "$c" ${BENCH_ARGS:-} >>"$OUT/bench.log" 2>&1
    log "bench $c rc=$?"
  done
  grep -iE "tokens/s" "$OUT/bench.log" | tail -4 >>"$S"
fi
log done
