#!/usr/bin/env bash
# The paper's accuracy/memory trade-off at small scale (issue 14), end to end on one GPU:
#   1. pre-train a 12-layer Pythia-160M-shaped MHA model from scratch on the Debian-docs corpus;
#   2. export it to HF, and `mlkv-convert import` it into the nine plans of configs/pythia160m_*.toml
#      (`--merge mean`), plus `--merge paper` with kv.rope_shared_keys = false (the seed code's
#      recipe) for MQA-12, MLKV-6 and MLKV-2, plus a second data/init seed for MLKV-6 and MLKV-2;
#   3. uptrain every one for the same steps and schedule (MHA-144 too: the control that only
#      trains longer), evaluate validation loss/perplexity and a held-out next-sentence task;
#   4. results.csv, pareto.png (val loss against KV-cache bytes per token) and curves.png.
#
#   BUILD=build scripts/reproduce_paper.sh          # on the GPU host (~9 min on one H200)
#   SCALE=smoke BUILD=build scripts/reproduce_paper.sh                   # CPU, tiny shape, bundled data
#
# The corpus: $CORPUS (default data/corpus) as data/scripts/make_corpus.sh builds it; where it is
# missing and the pack $PACK (default .corpus/corpus.tar.xz, `make_corpus.sh pack`) is there, it is
# unpacked and re-tokenized first (the GPU host has no network), checked against the packed sha256s.
#
# Every stage leaves a marker in $OUT and is skipped when it is there, and every training run
# resumes with --resume auto: an interrupted run of this script continues where it stopped.
# Knobs (defaults for SCALE=full, the README's run): PRETRAIN_STEPS=1000, UPTRAIN_STEPS=60, BATCH=16,
# ACCUM=2, SEQ=2048, VAL_BATCHES=8, CHOICE_ITEMS=300; OUT=runs/paper; RUNS="name ..." picks runs.
# The README also reports PRETRAIN_STEPS=400 (the previous run). Each pre-training step takes ~0.14 s
# and each uptraining run ~20 s on one H200, so UPTRAIN_STEPS=200 adds about 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
BIN=$BUILD/bin
SCALE=${SCALE:-full}
TOKENIZER=data/tokenizer/gpt-neox-20b.json
case "$SCALE" in
  full)
    OUT=${OUT:-runs/paper}; CORPUS=${CORPUS:-data/corpus}; BACKEND=${BACKEND:-cuda}
    PRETRAIN_STEPS=${PRETRAIN_STEPS:-1000}; UPTRAIN_STEPS=${UPTRAIN_STEPS:-60}
    BATCH=${BATCH:-16}; ACCUM=${ACCUM:-2}; SEQ=${SEQ:-2048}; VAL_BATCHES=${VAL_BATCHES:-8}
    CHOICE_ITEMS=${CHOICE_ITEMS:-300}
    SHAPE=() ;;
  smoke)  # the same 12-layer plans at d_model 96 (12 heads of dim 8) on the bundled demo shards
    OUT=${OUT:-runs/paper-smoke}; CORPUS=${CORPUS:-data/demo}; BACKEND=${BACKEND:-cpu}
    PRETRAIN_STEPS=${PRETRAIN_STEPS:-20}; UPTRAIN_STEPS=${UPTRAIN_STEPS:-6}
    BATCH=${BATCH:-2}; ACCUM=${ACCUM:-1}; SEQ=${SEQ:-32}; VAL_BATCHES=${VAL_BATCHES:-2}
    CHOICE_ITEMS=${CHOICE_ITEMS:-12}
    SHAPE=(model.d_model=96 model.max_seq_len=256 train.threads=1) ;;
  *) echo "reproduce_paper: SCALE must be full or smoke, not '$SCALE'" >&2; exit 2 ;;
esac
for exe in mlkv-train mlkv-convert mlkv-eval; do
  [ -x "$BIN/$exe" ] || { echo "reproduce_paper: $BIN/$exe is missing: build first (ninja -C $BUILD)" >&2; exit 2; }
done
PACK=${PACK:-.corpus/corpus.tar.xz}
if [ "$SCALE" = full ] && [ ! -d "$CORPUS/train" ] && [ -f "$PACK" ]; then
  echo "== reproduce_paper: $CORPUS/train is missing: unpacking $PACK"
  [ -x "$BIN/mlkv-data" ] || { echo "reproduce_paper: $BIN/mlkv-data is missing (ninja -C $BUILD mlkv-data)" >&2; exit 2; }
  PACK=$PACK OUT=$CORPUS BUILD=$BUILD bash data/scripts/make_corpus.sh unpack
fi
for split in train val; do
  [ -d "$CORPUS/$split" ] || { echo "reproduce_paper: $CORPUS/$split is missing (data/scripts/make_corpus.sh builds it)" >&2; exit 2; }
done
mkdir -p "$OUT"
start=$SECONDS
log() { echo "== reproduce_paper [$((SECONDS - start))s] $*"; }
sets() { local s; for s in "$@"; do printf -- '--set\n%s\n' "$s"; done; }

# name | config | merge | extra settings (space-separated k=v, "-" for none)
ALL_RUNS="
mha144|configs/pythia160m_mha144.toml|mean|-
gqa48|configs/pythia160m_gqa48.toml|mean|-
mlkv48|configs/pythia160m_mlkv48.toml|mean|-
mqa12|configs/pythia160m_mqa12.toml|mean|-
mlkv12|configs/pythia160m_mlkv12.toml|mean|-
mlkv6|configs/pythia160m_mlkv6.toml|mean|-
mlkv4|configs/pythia160m_mlkv4.toml|mean|-
mlkv2|configs/pythia160m_mlkv2.toml|mean|-
mlkv1|configs/pythia160m_mlkv1.toml|mean|-
mqa12-unrotated|configs/pythia160m_mqa12.toml|paper|kv.rope_shared_keys=false
mlkv6-unrotated|configs/pythia160m_mlkv6.toml|paper|kv.rope_shared_keys=false
mlkv2-unrotated|configs/pythia160m_mlkv2.toml|paper|kv.rope_shared_keys=false
mlkv6-seed2|configs/pythia160m_mlkv6.toml|mean|train.seed=2
mlkv2-seed2|configs/pythia160m_mlkv2.toml|mean|train.seed=2
"
RUNS=${RUNS:-$(awk -F'|' 'NF { printf "%s ", $1 }' <<<"$ALL_RUNS")}

# The settings every run shares: shape, data, batch, backend, evaluation off (done after).
common=("${SHAPE[@]}" "data.path=$CORPUS/train" "data.val_path=$CORPUS/val" "train.backend=$BACKEND"
        "train.micro_batch=$BATCH" "train.grad_accum=$ACCUM" "train.seq_len=$SEQ" "train.eval_interval=0"
        "log.interval=10" "log.tensorboard=false" "checkpoint.keep_last=1")

# train NAME CONFIG STEPS [k=v ...]: trains into $OUT/NAME (resumable), then evaluates it.
train() {
  local name=$1 cfg=$2 steps=$3; shift 3
  local dir=$OUT/$name
  if [ ! -f "$dir/trained" ]; then
    local t0=$SECONDS
    mapfile -t args < <(sets "${common[@]}" "train.steps=$steps" "checkpoint.interval=$steps" \
                             "checkpoint.dir=$dir/checkpoints" "log.dir=$dir" "$@")
    "$BIN/mlkv-train" "$cfg" "${args[@]}" --resume auto > "$dir.train.log" 2>&1 ||
      { tail -20 "$dir.train.log" >&2; echo "reproduce_paper: training $name failed (log: $dir.train.log)" >&2; exit 1; }
    echo $((SECONDS - t0)) > "$dir/train_seconds"
    touch "$dir/trained"
  fi
  if [ ! -f "$dir/eval.json" ]; then
    "$BIN/mlkv-eval" --ckpt "$dir/checkpoints" --data "$CORPUS/val" --batches "$VAL_BATCHES" --backend "$BACKEND" \
      --json > "$dir/eval.json.partial"
    mv "$dir/eval.json.partial" "$dir/eval.json"
  fi
  if [ ! -f "$dir/choice.json" ]; then
    "$BIN/mlkv-eval" --ckpt "$dir/checkpoints" --choice "$OUT/choice_task.jsonl" --tokenizer "$TOKENIZER" \
      --backend "$BACKEND" --json > "$dir/choice.json.partial"
    mv "$dir/choice.json.partial" "$dir/choice.json"
  fi
  if [ ! -s "$dir/kv_bytes_per_token" ]; then  # what the plan implies, as mlkv-train states it
    mapfile -t args < <(sets "${common[@]}" "$@")
    "$BIN/mlkv-train" --print-config "$cfg" "${args[@]}" |
      sed -n 's/^# kv cache bf16: *\([0-9]*\) bytes\/token.*/\1/p' > "$dir/kv_bytes_per_token"
  fi
}

log "choice task from held-out text"
if [ ! -f "$OUT/choice_task.jsonl" ]; then
  if [ "$SCALE" = smoke ]; then  # no corpus text here: the repository's own prose, as held-out documents
    python3 - "$OUT/smoke_docs.jsonl" README.md core/hf/README.md tests/fuzz/README.md <<'EOF'
import json, sys
with open(sys.argv[1], "w") as out:
    for path in sys.argv[2:]:
        for i, block in enumerate(open(path).read().split("\n\n")):
            text = " ".join(block.split())
            if text and not text.startswith(("|", "#", "`", "-")):
                out.write(json.dumps({"text": text, "source": f"{path}:{i}"}) + "\n")
EOF
    docs=("$OUT/smoke_docs.jsonl")
  else
    shopt -s nullglob
    docs=("$CORPUS"/text/val/*.jsonl)
    shopt -u nullglob
    [ ${#docs[@]} -gt 0 ] || { echo "reproduce_paper: no held-out text in $CORPUS/text/val/" >&2; exit 2; }
  fi
  python3 data/scripts/make_choice_task.py "${docs[@]}" --out "$OUT/choice_task.jsonl.partial" \
    --items "$CHOICE_ITEMS" --seed 1234
  mv "$OUT/choice_task.jsonl.partial" "$OUT/choice_task.jsonl"
fi

log "1/3 pre-train MHA from scratch ($PRETRAIN_STEPS steps of $BATCH x $ACCUM x $SEQ tokens)"
mkdir -p "$OUT/base"
# Pythia's recipe at a higher peak rate and a short warmup, for a run this short.
train base configs/base/pythia160m.toml "$PRETRAIN_STEPS" optim.lr=1e-3 optim.warmup_fraction=0.05
if [ ! -f "$OUT/base/hf/config.json" ]; then
  rm -rf "$OUT/base/hf"
  "$BIN/mlkv-convert" export --ckpt "$OUT/base/checkpoints" --out "$OUT/base/hf.partial" --no-tokenizer > /dev/null
  mv "$OUT/base/hf.partial" "$OUT/base/hf"
fi

log "2/3 import and uptrain: $RUNS"
for name in $RUNS; do
  row=$(awk -F'|' -v n="$name" '$1 == n' <<<"$ALL_RUNS")
  [ -n "$row" ] || { echo "reproduce_paper: unknown run '$name' in RUNS" >&2; exit 2; }
  IFS='|' read -r _ cfg merge extra <<<"$row"
  extras=()
  [ "$extra" = "-" ] || read -ra extras <<<"$extra"
  mkdir -p "$OUT/$name"
  if [ ! -f "$OUT/$name/imported" ]; then
    rm -rf "$OUT/$name/init"
    mapfile -t args < <(sets "${SHAPE[@]}" "train.seq_len=$SEQ" "${extras[@]}")
    "$BIN/mlkv-convert" import --hf "$OUT/base/hf" --config "$cfg" --merge "$merge" --out "$OUT/$name/init" \
      "${args[@]}" > "$OUT/$name.import.log" 2>&1 ||
      { cat "$OUT/$name.import.log" >&2; echo "reproduce_paper: import of $name failed" >&2; exit 1; }
    touch "$OUT/$name/imported"
  fi
  # Uptraining: Pythia's peak rate, 10% warmup, cosine to 0.1 x, the same for every plan.
  train "$name" "$cfg" "$UPTRAIN_STEPS" "train.init_from=$OUT/$name/init" optim.lr=6e-4 optim.warmup_fraction=0.1 \
    "${extras[@]}"
  log "$name: $(cat "$OUT/$name/eval.json" | tr -d '\n') $(cat "$OUT/$name/choice.json" | tr -d '\n')"
done

log "3/3 results.csv and figures"
python3 - "$OUT" "$ALL_RUNS" $RUNS > "$OUT/results.csv" <<'EOF'
import json, os, sys
out, table, names = sys.argv[1], sys.argv[2], ["base"] + sys.argv[3:]
meta = {"base": ("configs/base/pythia160m.toml", "-", "-")}
for line in table.strip().splitlines():
    n, cfg, merge, extra = line.split("|")
    meta[n] = (cfg, merge, extra)
print("run,config,merge,rope_shared_keys,seed,kv_bytes_per_token,val_loss,val_ppl,choice_acc,choice_acc_norm,"
      "choice_items,steps,train_seconds")
for n in names:
    d = os.path.join(out, n)
    ev, ch = json.load(open(os.path.join(d, "eval.json"))), json.load(open(os.path.join(d, "choice.json")))
    cfg, merge, extra = meta[n]
    kv = open(os.path.join(d, "kv_bytes_per_token")).read().strip()
    rope = "false" if "kv.rope_shared_keys=false" in extra else "true"
    seed = "2" if "train.seed=2" in extra else "1234"
    secs = open(os.path.join(d, "train_seconds")).read().strip()
    print(f"{n},{cfg},{merge},{rope},{seed},{kv},{ev['loss']:.5f},{ev['ppl']:.3f},{ch['acc']:.4f},"
          f"{ch['acc_norm']:.4f},{ch['items']},{ev['step']},{secs}")
EOF
if PLOT_PYTHON=$(bash scripts/plot_python.sh); then
  "$PLOT_PYTHON" scripts/plot.py paper "$OUT/results.csv" "$OUT/pareto.png" --runs "$OUT" --curves "$OUT/curves.png"
  log "done: $OUT/results.csv, $OUT/pareto.png, $OUT/curves.png"
else  # a GPU host without matplotlib: the figures are made where it is, from the same files
  log "done: $OUT/results.csv; no matplotlib here, so make the figures elsewhere with" \
      "scripts/plot.py paper results.csv pareto.png --runs DIR --curves curves.png (DIR: $OUT, with RUN/metrics.jsonl)"
fi
cat "$OUT/results.csv"
