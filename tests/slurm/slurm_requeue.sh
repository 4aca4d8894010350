#!/usr/bin/env bash
# launch/slurm/train.sbatch under a real one-node Slurm (munged, slurmctld, slurmd started here,
# configured in a temporary directory, stopped again by the pids recorded at their start).
#
#   tests/slurm/slurm_requeue.sh SOURCE_DIR MLKV_TRAIN
#
# One job of a tiny CPU config, stopped twice on its way: `scancel --signal=USR1 --batch` (what
# --signal=B:USR1@120 does before the time limit) and `scontrol requeue`. Each stop must give a
# checkpoint at the stop step and exit 3, a requeue, a restart that resumes from that step, and
# at the end weights bitwise equal to an uninterrupted run's. A second job, submitted with
# --no-requeue, must end non-zero (exit 3) when stopped. Installs slurm-wlm and munge when missing
# (root or sudo). Exit 77 (skipped) where Slurm cannot be installed or started, except in CI
# (CI=true), where that is a failure.
set -uo pipefail
SRC=$(cd "${1:?usage: slurm_requeue.sh SOURCE_DIR MLKV_TRAIN}" && pwd)
BIN=${2:?usage: slurm_requeue.sh SOURCE_DIR MLKV_TRAIN}
SKIP=77

say() { echo "[slurm-test $(date +%T)] $*" >&2; }
fail() {
  say "FAIL: $*"
  exit 1
}
unavailable() {
  if [ "${CI:-}" = true ]; then fail "$* (CI=true: a real Slurm is required)"; fi
  say "SKIP: $*"
  exit "$SKIP"
}

# ---- Slurm and munge, installed when missing
need=(slurmctld slurmd sbatch scontrol scancel munged mungekey)
missing() { for c in "${need[@]}"; do command -v "$c" >/dev/null || PATH=$PATH:/usr/sbin command -v "$c" >/dev/null || return 0; done; return 1; }
export PATH=$PATH:/usr/sbin:/sbin
if missing; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo -n true 2>/dev/null || unavailable "slurm-wlm/munge are not installed and there is no root or sudo"
    sudo="sudo -n"
  fi
  say "installing slurm-wlm munge"
  $sudo apt-get update -qq >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null 2>&1 ||
    unavailable "apt-get install slurm-wlm munge failed"
  missing && unavailable "slurm-wlm/munge installed, but ${need[*]} are not all there"
fi
[ "$(id -u)" -eq 0 ] || unavailable "slurmd must run as root to start jobs as their owner (run this test as root)"

# ---- a private cluster: everything under $T, daemons stopped by pid on any exit
T=$(mktemp -d "${TMPDIR:-/tmp}/mlkv-slurm-XXXXXX")
chmod 700 "$T"
pids=()
cleanup() {
  local rc=$?
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  done
  if [ "$rc" -ne 0 ] && [ "$rc" -ne "$SKIP" ]; then
    for f in "$T"/slurmctld.log "$T"/slurmd.log "$T"/job/*.out; do
      [ -f "$f" ] && { echo "---- $f (last 40 lines)"; tail -n 40 "$f"; }
    done
  fi
  [ -n "${MLKV_TEST_KEEP:-}" ] && say "kept $T" || rm -rf "$T"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' TERM INT HUP

# A free local port (nothing listening), from a range the defaults (6817-6819) stay clear of.
free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  return 1
}

mkdir -p "$T/munge" "$T/state" "$T/spool" "$T/job" "$T/ref"
chmod 700 "$T/munge"
mungekey --create --keyfile="$T/munge/munge.key" >/dev/null 2>&1 ||
  { dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 status=none && chmod 400 "$T/munge/munge.key"; }
munged --foreground --force --socket="$T/munge/socket" --key-file="$T/munge/munge.key" \
  --pid-file="$T/munge/munged.pid" --log-file="$T/munge/munged.log" --seed-file="$T/munge/seed" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ -S "$T/munge/socket" ] && break; sleep 0.1; done
[ -S "$T/munge/socket" ] || unavailable "munged did not start: $(tail -n 3 "$T/munge/munged.log" 2>/dev/null)"

HOST=$(hostname -s)
CPUS=$(nproc)
ctld_port=$(free_port) && slurmd_port=$(free_port) || unavailable "no free local port"
export SLURM_CONF=$T/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=mlkvtest
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job is held before it may start again (default 120 s, least 5).
AuthInfo=socket=$T/munge/socket,cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
KillWait=30
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=main Nodes=$HOST Default=YES MaxTime=INFINITE State=UP PriorityTier=1
EOF

slurmctld -D -i -f "$SLURM_CONF" >>"$T/slurmctld.log" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" -N "$HOST" >>"$T/slurmd.log" 2>&1 &
pids+=($!)
up=0
for _ in $(seq 100); do
  if sinfo -h -o %T 2>/dev/null | grep -qx idle; then up=1; break; fi
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || unavailable "a Slurm daemon exited at start (see the logs above)"; done
  sleep 0.3
done
[ "$up" -eq 1 ] || unavailable "the node did not become idle: $(sinfo -h 2>&1 | head -n 3)"
say "Slurm $(sinfo -V) up: slurmctld :$ctld_port, slurmd :$slurmd_port, $CPUS CPUs, state in $T"

# ---- the run: a tiny model on the bundled demo text, 24 steps, only stop checkpoints
write_config() {
  cat >"$1/run.toml" <<EOF
include = "$SRC/configs/base/tiny.toml"
[model]
name = "slurm-test"
layers = 2
d_model = 64
heads = 1
max_seq_len = 32
[train]
steps = 24
micro_batch = 2
seq_len = 32
backend = "cpu"
threads = 1
eval_interval = 0
[data]
path = "$SRC/data/demo/train"
val_path = "$SRC/data/demo/val"
prefetch = 2
[checkpoint]
dir = "ckpt"
interval = 0
keep_last = 4
[log]
dir = "log"
interval = 1
tensorboard = false
EOF
}
write_config "$T/ref"
write_config "$T/job"
(cd "$T/ref" && "$BIN" run.toml >ref.log 2>&1) || fail "the uninterrupted run failed: $(tail -n 5 "$T/ref/ref.log")"

wait_for() { # FILE TEXT SECONDS [COUNT]: until TEXT is in FILE COUNT (default 1) times
  local n
  for _ in $(seq $(($3 * 10))); do
    n=$(grep -cF -- "$2" "$1" 2>/dev/null)
    [ "${n:-0}" -ge "${4:-1}" ] && return 0
    sleep 0.1
  done
  fail "'$2' is ${n:-0} times in $1 after $3 s, expected ${4:-1}"
}
job_field() { scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }
wait_state() { # JOB STATE SECONDS
  for _ in $(seq $(($3 * 2))); do [ "$(job_field "$1" JobState)" = "$2" ] && return 0; sleep 0.5; done
  fail "job $1 is $(job_field "$1" JobState), not $2, after $3 s"
}
check_stop() { # OUT N SIGNALS: the N-th stop, by one of SIGNALS (a regex); prints its step
  local out=$1 step
  wait_for "$out" "mlkv-train exited with 3" 120 "$2"
  step=$(sed -n "s/.*stop requested ($3): checkpointing at step \([0-9]*\) and exiting with code 3.*/\1/p" "$out" | sed -n "$2p")
  [ -n "$step" ] || fail "stop $2 of $out was not by $3"
  [ -f "ckpt/step-$(printf %08d "$step")/state.json" ] || fail "no checkpoint at stop step $step"
  echo "$step"
}

cd "$T/job" || exit 1
export MLKV_BIN=$BIN
job=$(sbatch --parsable --output="$T/job/job.out" "$SRC/launch/slurm/train.sbatch" run.toml) || fail "sbatch refused the script"
out=$T/job/job.out
say "job $job submitted"

# 1. Slurm's time-limit warning, sent by hand: SIGUSR1 to the batch shell only.
wait_for "$out" "step 5/24" 120
scancel --signal=USR1 --batch "$job" || fail "scancel --signal=USR1 --batch"
s1=$(check_stop "$out" 1 SIGUSR1) || exit 1
wait_for "$out" "requeueing job $job: it resumes from the checkpoint (step $s1 of 24" 30
t_requeue=$(date +%s)
say "stopped at step $s1 by SIGUSR1, exit 3, requeued; waiting for the restart"

# 2. An administrator's (or a preemption's) requeue of the running job: SIGTERM to it all.
wait_for "$out" "resumed from ckpt/step-$(printf %08d "$s1") at step $s1" 300
say "restart resumed from step $s1 after $(($(date +%s) - t_requeue)) s"
wait_for "$out" "step $((s1 + 4))/24" 120
scontrol requeue "$job" || fail "scontrol requeue $job"
s2=$(check_stop "$out" 2 "SIG[A-Z0-9]*") || exit 1
[ "$s2" -gt "$s1" ] || fail "second stop at step $s2, not after the first ($s1)"
say "stopped at step $s2 by scontrol requeue, exit 3; waiting for the restart"
wait_for "$out" "resumed from ckpt/step-$(printf %08d "$s2") at step $s2" 300

# 3. The end: COMPLETED 0:0, the weights and moments of the uninterrupted run, bit for bit.
wait_state "$job" COMPLETED 120
[ "$(job_field "$job" ExitCode)" = "0:0" ] || fail "job $job ended with ExitCode $(job_field "$job" ExitCode)"
restarts=$(job_field "$job" Restarts)
[ "$restarts" -ge 2 ] || fail "job $job restarted $restarts times, expected 2"
[ "$(grep -c "starting fresh" "$out")" -eq 1 ] || fail "a restart started from scratch"
for f in model.safetensors optim.safetensors; do
  cmp -s "ckpt/step-00000024/$f" "$T/ref/ckpt/step-00000024/$f" || fail "$f at step 24 differs from the uninterrupted run's"
done
say "job $job: stops at steps $s1 (SIGUSR1) and $s2 (requeue), $restarts restarts, COMPLETED 0:0, step-24 weights and moments bitwise equal"

# 4. --no-requeue: the stop cannot be followed by a requeue, so the job must not end as a success.
rm -rf ckpt log
job2=$(sbatch --parsable --no-requeue --output="$T/job/job2.out" "$SRC/launch/slurm/train.sbatch" run.toml) || fail "sbatch --no-requeue"
wait_for "$T/job/job2.out" "step 3/24" 120
scancel --signal=USR1 --batch "$job2"
wait_for "$T/job/job2.out" "but Slurm refused to requeue job $job2" 60
wait_for "$T/job/job2.out" "steps remaining" 5
wait_state "$job2" FAILED 60
[ "$(job_field "$job2" ExitCode)" = "3:0" ] || fail "job $job2 ended with ExitCode $(job_field "$job2" ExitCode), expected 3:0"
say "job $job2 (--no-requeue): FAILED 3:0 with the reason in its output"
say "PASS"
