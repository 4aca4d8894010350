#!/usr/bin/env bash
# The README's one-GPU training table (issue 6 item 6): `mlkv-bench train` over Pythia 160M (every
# KV plan), 410M and 1B, with our attention kernels and, for the peer sizes, with cuDNN's
# (train.attention = "cudnn"). Prints each run's RESULT line, then one markdown row per run.
#   scripts/bench_train.sh [BIN_DIR]        default build/bin; CONFIGS="..." to choose
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-build/bin}/mlkv-bench
[ -x "$BIN" ] || { echo "bench_train: $BIN is missing: build first (cmake, then ninja mlkv-bench)" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || true
date -u +"%Y-%m-%d %H:%M UTC"
# config | extra settings ("-" for none) | also with cuDNN attention (y/n)
RUNS=${RUNS:-"
configs/pythia160m_mha144.toml|-|y
configs/pythia160m_gqa48.toml|-|n
configs/pythia160m_mlkv48.toml|-|n
configs/pythia160m_mqa12.toml|-|n
configs/pythia160m_mlkv12.toml|-|n
configs/pythia160m_mlkv6.toml|-|y
configs/pythia160m_mlkv4.toml|-|n
configs/pythia160m_mlkv2.toml|-|n
configs/pythia160m_mlkv1.toml|-|n
configs/base/pythia410m.toml|-|y
configs/base/pythia1b.toml|train.micro_batch=8 train.grad_accum=16|y
configs/base/pythia1b.toml|train.micro_batch=8 train.grad_accum=16 train.recompute=block|n
configs/pythia1b_mlkv.toml|train.micro_batch=8 train.grad_accum=16|n
"}
results=$(mktemp)
trap 'rm -f "$results"' EXIT
while IFS='|' read -r cfg extra cudnn; do
  [ -n "$cfg" ] || continue
  sets=()
  [ "$extra" = "-" ] || for kv in $extra; do sets+=(--set "$kv"); done
  for att in flash $([ "$cudnn" = y ] && echo cudnn); do
    # Not `tee /dev/stderr`: with stderr redirected to a file, each tee reopens it and truncates it.
    out=$(timeout 150 "$BIN" train "$cfg" "${sets[@]}" --set train.attention=$att 2>&1)
    printf '%s\n' "$out" >&2
    line=$(grep '^RESULT' <<<"$out")
    [ -n "$line" ] && echo "$line attention=$att extra=${extra// /,}" >>"$results"
  done
done <<<"$RUNS"
echo
echo "| config | settings | attention | tokens/s | MFU | peak memory |"
echo "|---|---|---|---|---|---|"
while read -r line; do
  get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
  mfu=$(awk -v m="$(get mfu)" 'BEGIN{printf "%.1f%%", 100*m}')
  echo "| $(get config) | $(get extra) | $(get attention) | $(get tok_s) | $mfu | $(get peak_mem_gib) GiB |"
done <"$results"
