#!/usr/bin/env bash
# scripts/reproduce_paper.sh SCALE=smoke end to end (CPU backend, 12-layer d_model 96 plans, the
# bundled demo shards): every run of the table is in results.csv with a finite validation loss
# below the untrained model's ln(vocab), choice accuracy in [0, 1], the cache sizes the plans
# imply, and both figures are PNG files. Then a second invocation must skip every stage (resumable).
#   reproduce_smoke.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src=$1 build=$2
out=$(mktemp -d "${TMPDIR:-/tmp}/mlkv-paper-smoke-XXXXXX")
trap 'rm -rf "$out"' EXIT
fail() { echo "reproduce_smoke: FAIL: $*" >&2; exit 1; }
SCALE=smoke BUILD=$build OUT=$out bash "$src/scripts/reproduce_paper.sh" > "$out.log" 2>&1 ||
  { cat "$out.log"; rm -f "$out.log"; fail "reproduce_paper.sh exited non-zero"; }
csv=$out/results.csv
[ "$(wc -l < "$csv")" -eq 16 ] || { cat "$csv"; fail "results.csv should have a header and 15 rows"; }
python3 - "$csv" <<'PY' || fail "results.csv values"
import csv, math, sys
rows = {r["run"]: r for r in csv.DictReader(open(sys.argv[1]))}
# 2 (K and V) x KV heads in the whole model x head dim 8 x 2 bytes
want = {"base": 144, "mha144": 144, "gqa48": 48, "mlkv48": 48, "mqa12": 12, "mlkv12": 12, "mlkv6": 6,
        "mlkv4": 4, "mlkv2": 2, "mlkv1": 1, "mqa12-unrotated": 12, "mlkv6-unrotated": 6,
        "mlkv2-unrotated": 2, "mlkv6-seed2": 6, "mlkv2-seed2": 2}
assert set(rows) == set(want), sorted(rows)
for name, heads in want.items():
    r = rows[name]
    assert int(r["kv_bytes_per_token"]) == 2 * heads * 8 * 2, (name, r["kv_bytes_per_token"])
    loss = float(r["val_loss"])
    assert math.isfinite(loss) and 0 < loss < math.log(50304), (name, loss)
    assert 0 <= float(r["choice_acc"]) <= 1 and int(r["choice_items"]) > 0, name
    assert (r["rope_shared_keys"] == "false") == name.endswith("-unrotated"), name
# uptraining continues from the base: every uptrained run ends below the base's loss
assert all(float(r["val_loss"]) < float(rows["base"]["val_loss"]) for n, r in rows.items() if n != "base")
PY
for png in pareto.png curves.png; do
  [ "$(head -c 8 "$out/$png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "$png is not a PNG"
done
# resumable: a second run finds every marker and trains, imports and evaluates nothing
touch "$out/before-second-run"
sleep 1
SCALE=smoke BUILD=$build OUT=$out bash "$src/scripts/reproduce_paper.sh" > "$out.log2" 2>&1 || { cat "$out.log2"; fail "second run"; }
redone=$(find "$out" -newer "$out/before-second-run" \( -name trained -o -name '*.json' -o -name '*.h5' \) | wc -l)
[ "$redone" -eq 0 ] || fail "the second run redid $redone stages: $(find "$out" -newer "$out/before-second-run" | head)"
rm -f "$out.log" "$out.log2"
echo "reproduce_smoke: ok ($(($(wc -l < "$csv") - 1)) runs)"
