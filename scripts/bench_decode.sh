#!/usr/bin/env bash
# Decode sweep of issue 13 on one GPU: every 160M KV plan and 1B MHA / 1B MLKV-8 at context 2048,
# at a 16 GiB budget (the seed paper's card class) and at the whole GPU; then the peer in the same
# run (scripts/bench_decode_hf.py: transformers generate on the export of the very weights we benched,
# and the torch SDPA decode of the same shapes) for PEER_CONFIGS at 16 GiB; then the figure.
#   OUT=dir BUILD=build scripts/bench_decode.sh      (CSV: $OUT/decode.csv, PNG: $OUT/decode.png)
# Env: STEPS (decode steps timed, ours and the peer's), BUDGETS (the second budget, default the whole
# GPU), PEER_CONFIGS (space-separated; empty: no peer), PYTHON (with torch + transformers).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/decode_out}
BUILD=${BUILD:-build}
STEPS=${STEPS:-6}
PYTHON=${PYTHON:-python3}
PEER_CONFIGS=${PEER_CONFIGS-configs/pythia160m_mha144.toml configs/pythia160m_mlkv2.toml configs/pythia1b_mlkv.toml}
mkdir -p "$OUT"
CSV=$OUT/decode.csv
rm -f "$CSV"
whole=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i 0 | awk '{printf "%.0f", $1/1024 - 3}')
configs="configs/pythia160m_mha144.toml configs/pythia160m_gqa48.toml configs/pythia160m_mlkv48.toml
  configs/pythia160m_mqa12.toml configs/pythia160m_mlkv12.toml configs/pythia160m_mlkv6.toml
  configs/pythia160m_mlkv4.toml configs/pythia160m_mlkv2.toml configs/pythia160m_mlkv1.toml
  configs/base/pythia1b.toml configs/pythia1b_mlkv.toml"
export_dir() { echo "$OUT/hf/$(basename "$1" .toml)"; }
for budget in 16 ${BUDGETS:-$whole}; do
  for c in $configs; do
    export=()  # the peer's model: these weights, written once (bf16 HF directory)
    if [ "$budget" = 16 ] && [[ " $PEER_CONFIGS " == *" $c "* ]]; then export=(--export-hf "$(export_dir "$c")"); fi
    "$BUILD/bin/mlkv-bench" decode "$c" --set train.backend=cuda --memory-budget-gib "$budget" --context 2048 \
      --steps "$STEPS" --warmup 2 --csv "$CSV" "${export[@]}" 2>&1 | tee -a "$OUT/decode.log"
  done
done
for c in $PEER_CONFIGS; do
  "$PYTHON" scripts/bench_decode_hf.py --model "$(export_dir "$c")" --csv "$CSV" --budget-gib 16 \
    --steps $((STEPS + 2)) --warmup 2 2>&1 | grep -v "^Loading weights" | tee -a "$OUT/decode.log"
done
python3 scripts/plot.py decode "$CSV" "$OUT/decode.png" 2>&1 | tee -a "$OUT/decode.log"
