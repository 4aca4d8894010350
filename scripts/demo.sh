#!/usr/bin/env bash
# The README demo (issue 4 item 7), given a built tree: uptrain a tiny Pythia-shaped model from MHA
# into an MLKV plan on the bundled King James Bible text, on the GPU when there is one, else the CPU.
#
#   1. train the tiny MHA model (configs/tiny/tiny_mha.toml) from scratch for a few steps — it stands
#      in for a downloaded Pythia checkpoint, which the demo must not need;
#   2. convert it: export to the HF layout, import into MLKV-2 (configs/tiny/tiny_mlkv.toml: 2 KV
#      layers x 1 KV head, K/V mean-pooled over heads and layers; KV cache 2048 -> 512 bytes/token);
#   3. uptrain the converted model (validated first; progress line, checkpoints; a new data order);
#   4. plot both runs' loss curves to a PNG and print a one-line summary.
#
#   BUILD=build scripts/demo.sh        OUT=runs/demo  MHA_STEPS=60  MLKV_STEPS=60
# The step counts and the small batch (4 sequences of 64 tokens) keep the whole demo under two
# minutes on two CPU cores; the output projection over the 50304-token vocabulary dominates.
set -euo pipefail
export LC_ALL=C  # printf %.3f below reads "6.41", whatever the locale
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
BIN=$BUILD/bin
OUT=${OUT:-runs/demo}
MHA_STEPS=${MHA_STEPS:-60}
MLKV_STEPS=${MLKV_STEPS:-60}
for exe in mlkv-train mlkv-convert; do
  [ -x "$BIN/$exe" ] || { echo "demo: $BIN/$exe is missing: build first (BUILD=$BUILD bash scripts/setup.sh)" >&2; exit 1; }
done
# The plot is matplotlib's (scripts/plot.py): Debian's python3 with python3-matplotlib (scripts/setup.sh
# installs it), or any interpreter that has matplotlib, named by MLKV_PLOT_PYTHON
# (scripts/plot_python.sh). Checked first, not after two minutes of training.
PLOT_PYTHON=$(bash scripts/plot_python.sh) || exit 1
[ -d data/demo/train ] || { echo "demo: data/demo/train is missing" >&2; exit 1; }

start=$(date +%s)
rm -rf "$OUT"  # the demo always starts over; real runs use --resume auto instead
shared=(--set data.path=data/demo/train --set data.val_path=data/demo/val
        --set train.seq_len=64 --set train.micro_batch=4 --set train.eval_batches=4
        --set log.interval=10 --set checkpoint.keep_last=2)

echo "== 1/4  train a tiny MHA model from scratch ($MHA_STEPS steps; stands in for a Pythia checkpoint)"
"$BIN/mlkv-train" configs/tiny/tiny_mha.toml "${shared[@]}" \
  --set train.steps="$MHA_STEPS" --set train.eval_interval=0 --set optim.warmup_steps=5 \
  --set checkpoint.dir="$OUT/mha/checkpoints" --set checkpoint.interval=0 --set log.dir="$OUT/mha"

echo "== 2/4  convert MHA -> MLKV-2 (export to the HF layout, import with mean-pooled K/V)"
"$BIN/mlkv-convert" export --ckpt "$OUT/mha/checkpoints" --out "$OUT/mha-hf"
"$BIN/mlkv-convert" import --hf "$OUT/mha-hf" --config configs/tiny/tiny_mlkv.toml --out "$OUT/mlkv-init" "${shared[@]}"

echo "== 3/4  uptrain the MLKV-2 model ($MLKV_STEPS steps)"
"$BIN/mlkv-train" configs/tiny/tiny_mlkv.toml "${shared[@]}" --set train.init_from="$OUT/mlkv-init" \
  --set train.steps="$MLKV_STEPS" --set train.eval_interval=20 --set optim.warmup_steps=5 --set train.seed=2 \
  --set checkpoint.dir="$OUT/mlkv/checkpoints" --set checkpoint.interval=20 --set log.dir="$OUT/mlkv"

echo "== 4/4  plot"
"$PLOT_PYTHON" scripts/plot.py loss "$OUT/loss.png" "$OUT/mha" "$OUT/mlkv" --chain --title "tiny MHA training, then MLKV-2 uptraining"

# Validation losses from metrics.jsonl: the uptraining run validates the converted model at step 0.
val_losses() { grep -o '"val_loss":[^,}]*' "$1/metrics.jsonl" | cut -d: -f2; }
printf 'demo: MHA val loss %.3f -> converted to MLKV-2 (KV cache 2048 -> 512 B/token) %.3f -> uptrained %d steps %.3f | %ds | plot %s | checkpoints %s\n' \
  "$(val_losses "$OUT/mha" | tail -1)" "$(val_losses "$OUT/mlkv" | head -1)" "$MLKV_STEPS" "$(val_losses "$OUT/mlkv" | tail -1)" "$(( $(date +%s) - start ))" \
  "$OUT/loss.png" "$OUT/mlkv/checkpoints"
