#!/usr/bin/env bash
# A/B of the attention kernels' measurement switches in one call (kernels/cuda/ATTENTION_NOTES.md
# names them: MLKV_ATTN_L2_MIB, MLKV_ATTN_FWD_SPLIT_KV, MLKV_ATTN_PERSISTENT, MLKV_ATTN_BWD_KV_PER,
# ...). `mlkv-bench-attention` runs the shapes with VAR unset, with each value, and unset again (the
# two unset runs bound the drift between runs); then one line per run: the forward, backward and
# total ms summed over the shapes.
#   scripts/ab_attention.sh VAR "v1 v2 ..." SHAPES [BIN]      ITERS=20 by default
# e.g. scripts/ab_attention.sh MLKV_ATTN_L2_MIB "32 40" "8,8,8,2048,256;8,8,2,2048,256"
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n '2,8p' "$0" >&2; exit 2; }
VAR=$1 VALUES=$2 SHAPES=$3 BIN=${4:-build/bin/mlkv-bench-attention}
[[ $VAR =~ ^MLKV_[A-Z0-9_]+$ ]] || { echo "ab_attention: VAR must be an MLKV_ switch, not '$VAR'" >&2; exit 2; }
[ -x "$BIN" ] || { echo "ab_attention: $BIN is missing: build mlkv-bench-attention first" >&2; exit 2; }
unset "$VAR"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
date -u +"%Y-%m-%d %H:%M UTC"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || true
rc=0
run() {  # run TAG [VALUE]: one bench run, rows tagged
  echo "## $1" >>"$log"
  if [ $# -gt 1 ]; then env "$VAR=$2" "$BIN" --shapes "$SHAPES" --iters "${ITERS:-20}"; else "$BIN" --shapes "$SHAPES" --iters "${ITERS:-20}"; fi \
    >>"$log" 2>&1 || { echo "ab_attention: the run with $1 failed (output above in the log below)" >&2; rc=1; }
}
run unset
for v in $VALUES; do run "$VAR=$v" "$v"; done
run "unset (again)"
cat "$log"
echo
echo "| run | fwd ms | bwd ms | total ms (sums over the shapes) |"
echo "|---|---|---|---|"
# Bench rows start with the shape (digits and commas); columns 2-4 are fwd, bwd, total.
awk '/^## /{t=substr($0, 4); order[++n]=t}
     /^[0-9]+,[0-9]+,[0-9]+,[0-9]+,[0-9]+ /{f[t]+=$2; b[t]+=$3; s[t]+=$4}
     END{for (i=1; i<=n; ++i) printf "| %s | %.3f | %.3f | %.3f |\n", order[i], f[order[i]], b[order[i]], s[order[i]]}' "$log"
exit $rc
