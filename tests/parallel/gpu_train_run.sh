#!/usr/bin/env bash
# Issue 8's run, at the scale the lent GPUs allow (nvidia-h200-x2): the real `mlkv-train` under
# mpirun on the shipped configs, stopped with SIGUSR1, resumed on the same and on another DP size.
#   OUT=dir tests/parallel/gpu_train_run.sh        logs under $OUT, one per run; summary.txt
# No Pythia checkpoint or Pile shards exist on the hosts: every run starts from the config's
# random Pythia init (train.init_from cleared) and reads the bundled data/demo shards.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu_train_out}
BUILD=${BUILD:-build-gpu}
NP=${NP:-2}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 OMP_NUM_THREADS=4
S=$OUT/summary.txt
log() { echo "== $(date -u +%T) $*" | tee -a "$S"; }
{ date -u; nvidia-smi -L; } >>"$S" 2>&1
if [ ! -x "$BUILD/bin/mlkv-train" ]; then
  log build
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMLKV_DEPS_ROOT="$PWD/.deps/root" >"$OUT/build.log" 2>&1 &&
    timeout 300 ninja -C "$BUILD" -j"$(nproc)" mlkv-train >>"$OUT/build.log" 2>&1 || { log "build FAILED"; tail -30 "$OUT/build.log"; exit 1; }
fi
T=$BUILD/bin/mlkv-train
mpi() { mpirun -np "$1" --allow-run-as-root --bind-to none -x NCCL_NVLS_ENABLE -x OMP_NUM_THREADS "${@:2}"; }
DATA=(--set train.init_from= --set data.path=data/demo/train --set data.val_path=data/demo/val
      --set log.interval=5 --set train.eval_interval=0)
summary() { grep -E "^\[rank 0\] (step|batch)|stopp|resum|checkpoint" "$1" | tail -"${2:-4}" >>"$S"; }

# Runs `mpirun -np NP mlkv-train ARGS...` into LOG and sends the ranks SIGUSR1 once rank 0 has
# logged step STOP (0: let it finish). Returns mpirun's exit code.
run_stop_at() {
  local np=$1 log_file=$2 stop=$3
  shift 3
  mpi "$np" "$T" "$@" >"$log_file" 2>&1 &
  local pid=$!
  if [ "$stop" -gt 0 ]; then
    for _ in $(seq 600); do
      grep -q "step $stop/" "$log_file" 2>/dev/null && break
      kill -0 $pid 2>/dev/null || break
      sleep 0.5
    done
    pkill -USR1 -x mlkv-train
  fi
  wait $pid
}

# 1. The design card's command on NP GPUs: Pythia-1B MLKV-8, dp = NP. The global batch is kept
#    small (micro-batch 4 x accum 2 x dp) so a step takes well under a second. SIGUSR1 at step 15
#    (checkpoint, exit 3); resume on NP ranks, SIGUSR1 again at 30; resume on NP/2 ranks (accum
#    doubled: the same global batch and data stream) to the end, step 40.
C1B=configs/pythia1b_mlkv.toml
R1B=(--set train.grad_accum=2 --set train.steps=40 --set checkpoint.interval=100
     --set checkpoint.dir="$OUT/1b/ckpt" --set log.dir="$OUT/1b")
log "1b: mpirun -np $NP mlkv-train $C1B, SIGUSR1 at step 15"
run_stop_at "$NP" "$OUT/1b_a.log" 15 "$C1B" "${DATA[@]}" "${R1B[@]}"
log "1b first run rc=$? (3 = stopped after writing a checkpoint)"
summary "$OUT/1b_a.log" 6
ls "$OUT/1b/ckpt" >>"$S" 2>&1
log "1b: resume on $NP ranks, SIGUSR1 at step 30"
run_stop_at "$NP" "$OUT/1b_b.log" 30 "$C1B" "${DATA[@]}" "${R1B[@]}" --resume auto
log "1b resume rc=$?"
summary "$OUT/1b_b.log" 6
half=$((NP / 2))
[ "$half" -ge 1 ] || half=1
log "1b: resume on $half rank(s), accum $((2 * NP / half)) (the same global batch), to step 40"
run_stop_at "$half" "$OUT/1b_c.log" 0 "$C1B" "${DATA[@]}" "${R1B[@]}" --set train.grad_accum=$((2 * NP / half)) \
  --resume auto
log "1b resume at dp $half rc=$?"
summary "$OUT/1b_c.log" 4

# 2. Pythia-160M MLKV-6, dp = NP, the config as shipped but for the batch and step count.
log "160m: mpirun -np $NP mlkv-train configs/pythia160m_mlkv6.toml"
mpi "$NP" "$T" configs/pythia160m_mlkv6.toml "${DATA[@]}" --set train.grad_accum=2 --set train.steps=30 \
  --set checkpoint.interval=0 --set checkpoint.dir="$OUT/160m/ckpt" --set log.dir="$OUT/160m" >"$OUT/160m.log" 2>&1
log "160m rc=$?"
summary "$OUT/160m.log" 3

# 3. Pythia-2.8B MLKV-16 with tp = 2 (its config), dp = NP / 2.
log "2.8b: mpirun -np $NP mlkv-train configs/pythia2.8b_mlkv16_tp2.toml (tp 2)"
mpi "$NP" "$T" configs/pythia2.8b_mlkv16_tp2.toml "${DATA[@]}" --set train.micro_batch=4 --set train.grad_accum=2 \
  --set train.steps=15 --set checkpoint.interval=0 --set checkpoint.dir="$OUT/2.8b/ckpt" --set log.dir="$OUT/2.8b" \
  >"$OUT/2.8b.log" 2>&1
log "2.8b rc=$?"
summary "$OUT/2.8b.log" 3
log done
