#!/usr/bin/env bash
# Runs mlkv-train on this node's GPUs (or N CPU ranks) under Open MPI's mpirun.
#
#   launch/mpirun.sh NP CONFIG [mlkv-train args...]      e.g. launch/mpirun.sh 8 configs/pythia1b_mlkv.toml
#
# One rank per GPU: rank r uses GPU OMPI_COMM_WORLD_LOCAL_RANK (NCCL allows one rank per GPU).
# world = dp × parallel.tp, tp innermost, so tensor-parallel groups are consecutive ranks of one
# node. Environment for every rank is passed with -x:
#   NCCL_NVLS_ENABLE=0      NVLink multicast off (required on the shared GPU hosts)
#   NCCL_DEBUG=WARN         NCCL's own warnings (set INFO to debug a hang)
#   OMP_NUM_THREADS         CPU threads per rank (the CPU backend; default 1 per rank)
# plus anything named in MLKV_MPI_EXPORT (space-separated variable names), e.g. NCCL_IB_HCA.
# Extra mpirun flags go in MLKV_MPIRUN_FLAGS (e.g. "--hostfile hosts --map-by ppr:8:node").
# The binary: MLKV_BIN, else build/bin/mlkv-train of this repository.
# Stopping: SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 to this script make every rank finish its step,
# checkpoint and exit 3 (so does this script). Open MPI's mpirun would kill the ranks ~2 s after
# a SIGTERM/SIGINT of its own; it forwards SIGUSR1 untouched, so that is what it gets from here.
# A SIGKILL of this script (no trap runs) stops the job the same way: mpirun's parent-death
# signal is SIGUSR1 (setpriv --pdeathsig), so it never trains on unattended.
# Binding: one core range per rank (--map-by slot:PE=k), k = cores / ranks, so the data loader
# and the CPU side of each rank do not fight over cores. Root (containers) needs
# --allow-run-as-root, added automatically.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
NP=$1
shift
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${MLKV_BIN:-$HERE/build/bin/mlkv-train}
[ -x "$BIN" ] || { echo "mpirun.sh: $BIN is not an executable (build it, or set MLKV_BIN)" >&2; exit 2; }

flags=(-np "$NP")
[ "$(id -u)" -eq 0 ] && flags+=(--allow-run-as-root)
cores=$(nproc)
pe=$(( cores / NP ))
if [ "$pe" -ge 1 ]; then flags+=(--map-by "slot:PE=$pe" --bind-to core); else flags+=(--oversubscribe); fi
export NCCL_NVLS_ENABLE=0
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for v in NCCL_NVLS_ENABLE NCCL_DEBUG OMP_NUM_THREADS ${MLKV_MPI_EXPORT:-}; do flags+=(-x "$v"); done
# shellcheck disable=SC2206
extra=(${MLKV_MPIRUN_FLAGS:-})
# mpirun gets a process group of its own (set -m), so a Ctrl-C in the terminal reaches only this
# script, which passes it on as SIGUSR1; mpirun reads no terminal input (--stdin none).
child=0
pending=0
forward() {
  pending=1
  [ "$child" -ne 0 ] && kill -USR1 "$child" 2>/dev/null
  return 0
}
trap forward TERM INT USR1 HUP
orphan_stop=()
command -v setpriv >/dev/null && orphan_stop=(setpriv --pdeathsig USR1)
set -m
"${orphan_stop[@]}" mpirun --stdin none "${flags[@]}" "${extra[@]}" "$BIN" "$@" &
child=$!
set +m
[ "$pending" -eq 1 ] && kill -USR1 "$child" 2>/dev/null
# `wait` returns early (128 + n) when a trapped signal arrives: wait again while mpirun runs.
while :; do
  rc=0
  wait "$child" || rc=$?
  kill -0 "$child" 2>/dev/null || break
done
exit "$rc"
