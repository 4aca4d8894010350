#!/usr/bin/env bash
# Attention micro-benchmark (issue 6 item 6): our MLKV kernel and, when built with cuDNN, our cuDNN
# SDPA backend (both mlkv-bench-attention), and torch SDPA with the cuDNN and FlashAttention-2
# backends on the same shapes, in one run, one table.
#   scripts/bench_attention.sh [BIN]     SHAPES="B,H,KVH,T,hd;..." ITERS=20 override the defaults
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-build/bin/mlkv-bench-attention}
SHAPES=${SHAPES:-"16,12,12,2048,64;16,12,1,2048,64;8,8,8,2048,256;4,32,32,2048,80;2,16,16,8192,128;16,12,2,2048,64;16,12,4,2048,64;8,8,1,2048,256;8,8,2,2048,256;4,32,4,2048,80;2,16,1,8192,128"}
ITERS=${ITERS:-20}
csv=$(mktemp)
trap 'rm -f "$csv"' EXIT
date -u +"%Y-%m-%d %H:%M UTC"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader || true
"$BIN" --shapes "$SHAPES" --iters "$ITERS" --csv "$csv"
echo
PYTHONUNBUFFERED=1 python3 scripts/bench_attention_torch.py --shapes "$SHAPES" --iters "$ITERS" --ours-csv "$csv"
