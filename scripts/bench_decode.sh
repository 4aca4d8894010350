#!/usr/bin/env bash
# Decode sweep of issue 13 on one GPU: every 160M KV plan and 1B MHA / 1B MLKV-8 at context 2048,
# at a 16 GiB budget (the seed paper's card class) and at the whole GPU, then the figure.
#   OUT=dir BUILD=build scripts/bench_decode.sh      (CSV: $OUT/decode.csv, PNG: $OUT/decode.png)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/decode_out}
BUILD=${BUILD:-build}
STEPS=${STEPS:-6}
mkdir -p "$OUT"
CSV=$OUT/decode.csv
rm -f "$CSV"
whole=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i 0 | awk '{printf "%.0f", $1/1024 - 3}')
configs="configs/pythia160m_mha144.toml configs/pythia160m_gqa48.toml configs/pythia160m_mlkv48.toml
  configs/pythia160m_mqa12.toml configs/pythia160m_mlkv12.toml configs/pythia160m_mlkv6.toml
  configs/pythia160m_mlkv4.toml configs/pythia160m_mlkv2.toml configs/pythia160m_mlkv1.toml
  configs/base/pythia1b.toml configs/pythia1b_mlkv.toml"
for budget in 16 ${BUDGETS:-$whole}; do
  for c in $configs; do
    "$BUILD/bin/mlkv-bench" decode "$c" --set train.backend=cuda --memory-budget-gib "$budget" --context 2048 \
      --steps "$STEPS" --warmup 2 --csv "$CSV" 2>&1 | tee -a "$OUT/decode.log"
  done
done
python3 scripts/plot.py decode "$CSV" "$OUT/decode.png" 2>&1 | tee -a "$OUT/decode.log"
