#!/usr/bin/env bash
# Rebuilds data/demo/: the King James Bible (1611; public domain) tokenized with the GPT-NeoX-20B
# tokenizer. Text source: Debian package bible-kjv (its `bible` program and the
# bible-kjv-text data). One document per chapter (a heading line, then one verse per line);
# every 40th chapter goes to the validation set.
#   apt-get install bible-kjv && ninja -C build mlkv-data && data/scripts/make_demo.sh
# A larger corpus is built the same way: put text in .txt (or .jsonl with a "text" field) files
# and run `mlkv-data tokenize --tokenizer data/tokenizer/gpt-neox-20b.json FILES... OUT`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=${MLKV_DATA:-$repo/build/bin/mlkv-data}
out=${1:-$repo/data/demo}
command -v bible >/dev/null || { echo "needs the bible program: apt-get install bible-kjv" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# "Ge1:1 In the beginning ..." -> chapters separated by blank lines.
bible -f -l100000 gen1:1-rev22:21 | awk -v train="$work/train.txt" -v val="$work/val.txt" '
  match($0, /^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ /) {
    ref = substr($0, 1, RLENGTH - 1); text = substr($0, RLENGTH + 1)
    split(ref, parts, ":"); chapter = parts[1]
    if (chapter != current) {
      current = chapter; n++
      file = (n % 40 == 0) ? val : train
      sub(/[0-9]+$/, " &", chapter)
      printf "%s%s\n", (seen[file]++ ? "\n" : ""), chapter > file
    }
    print text > file
  }'
sha256sum "$work/train.txt" "$work/val.txt"
rm -rf "$out/train" "$out/val"
for split in train val; do
  "$bin" tokenize --tokenizer "$repo/data/tokenizer/gpt-neox-20b.json" \
    --tokenizer-name EleutherAI/gpt-neox-20b --split paragraph --compress 6 \
    "$work/$split.txt" "$out/$split"
done
"$bin" verify "$out/train" | tail -1
"$bin" verify "$out/val" | tail -1
# When HF tokenizers is installed, prove the shards hold exactly HF's ids.
if python3 -c "import tokenizers" 2>/dev/null; then
  python3 "$repo/data/scripts/check_demo.py" "$repo/data/tokenizer/gpt-neox-20b.json" \
    "$work/train.txt" "$out/train" "$work/val.txt" "$out/val"
fi
