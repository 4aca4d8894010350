#!/usr/bin/env bash
# The README's one-GPU training table (issues 6 and 15): `mlkv-bench train` over Pythia 160M (every
# KV plan), 410M, 1B, 2.8B and 6.9B with the default attention (train.attention = "auto": the
# faster measured path per head dim and KV grouping: ours at hd 64, and at hd 80 with K/V shared,
# cuDNN's elsewhere) and, where the third field says y, again with our own kernels
# (train.attention = "flash"). Prints each run's RESULT line, then one markdown row
# per run; the attention column is "asked: used".
#   scripts/bench_train.sh [BIN_DIR]        default build/bin
#   RUNS="config|settings|y-or-n ..." to choose rows; STEPS, WARMUP (default 5, 2) per run;
#   TIMEOUT (default 300) seconds per run (2.8B and 6.9B spend minutes initialising on the host).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-build/bin}/mlkv-bench
[ -x "$BIN" ] || { echo "bench_train: $BIN is missing: build first (cmake, then ninja mlkv-bench)" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || true
date -u +"%Y-%m-%d %H:%M UTC"
# 2.8B and 6.9B fit one H200 (141 GB) at these micro-batches: 6.9B holds 124 GB of fp32 master,
# gradients and Adam moments plus bf16 weights, so it recomputes each block in the backward.
# config | extra settings ("-" for none) | also with our attention kernels (y/n)
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
configs/pythia1b_mlkv.toml|train.micro_batch=8 train.grad_accum=16|y
configs/base/pythia2.8b.toml|train.micro_batch=4 train.grad_accum=8|n
configs/base/pythia6.9b.toml|parallel.tp=1 train.micro_batch=2 train.grad_accum=4 train.recompute=block|n
"}
STEPS=${STEPS:-5}
WARMUP=${WARMUP:-2}
results=$(mktemp)
trap 'rm -f "$results"' EXIT
while IFS='|' read -r cfg extra ours; do
  [ -n "$cfg" ] || continue
  sets=()
  [ "$extra" = "-" ] || for kv in $extra; do sets+=(--set "$kv"); done
  for att in auto $([ "$ours" = y ] && echo flash); do
    # Not `tee /dev/stderr`: with stderr redirected to a file, each tee reopens it and truncates it.
    out=$(timeout "${TIMEOUT:-300}" "$BIN" train "$cfg" "${sets[@]}" --set train.attention=$att \
          --steps "$STEPS" --warmup "$WARMUP" 2>&1)
    printf '%s\n' "$out" >&2
    line=$(grep '^RESULT' <<<"$out")
    [ -n "$line" ] && echo "$line asked=$att extra=${extra// /,}" >>"$results"
  done
done <<<"$RUNS"
echo
echo "| config | settings | attention | tokens/s | MFU | peak memory | activations |"
echo "|---|---|---|---|---|---|---|"
while read -r line; do
  get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
  mfu=$(awk -v m="$(get mfu)" 'BEGIN{printf "%.1f%%", 100*m}')
  echo "| $(get config) | $(get extra) | $(get asked): $(get attention) | $(get tok_s) | $mfu |" \
       "$(get peak_mem_gib) GiB | $(get act_gib) GiB |"
done <"$results"
