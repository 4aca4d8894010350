#!/usr/bin/env bash
# Builds the paper-reproduction corpus (issue 14): English prose from Debian documentation packages,
# tokenized with the bundled GPT-NeoX tokenizer into HDF5 shards, with a validation split by document.
#
#   BUILD=build OUT=data/corpus bash data/scripts/make_corpus.sh
#   SCALE=smoke OUT=runs/smoke-corpus bash data/scripts/make_corpus.sh   # 3 packages, 25 files each
#
# Stages (each skipped when its output is there and was made from the same inputs):
#   1. apt-get download PACKAGE=VERSION for every line of $PACKAGES (data/scripts/corpus_packages.tsv),
#      checked with dpkg-deb -f, into $OUT/debs/;
#   2. dpkg-deb -x into $OUT/unpacked/PACKAGE/; the package's /usr/share/doc/PACKAGE/copyright is
#      kept in $OUT/licences/ (a package without one is refused: its licence could not be checked);
#   3. data/scripts/corpus_clean.py: markup -> prose paragraphs, one document per file, files in
#      sorted order, paragraphs deduplicated across the corpus, and the validation split by document
#      (sha256 of "SEED:package:path" mod 1000 < VAL_PERMILLE) -> $OUT/text/{train,val}/PACKAGE.jsonl;
#   4. mlkv-data tokenize, one shard prefix per package -> $OUT/train/PACKAGE-NNNNN.h5 and
#      $OUT/val/PACKAGE-NNNNN.h5 (gzip level $COMPRESS), then mlkv-data verify;
#   5. $OUT/manifest.json: per package its version, declared licence, the copyright file's License:
#      lines and sha256, the .deb's sha256, files read, bytes in, documents, bytes and tokens per split.
# Deterministic: pinned versions, sorted file order, a fixed seed; the same inputs give the same
# text and the same shards. Needs network for stage 1 only (apt-get download needs no root).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
BIN=$BUILD/bin
OUT=${OUT:-data/corpus}
SCALE=${SCALE:-full}
SEED=${SEED:-1234}
VAL_PERMILLE=${VAL_PERMILLE:-20}
COMPRESS=${COMPRESS:-6}
TOKENIZER=data/tokenizer/gpt-neox-20b.json
case "$SCALE" in
  full) PACKAGES=${PACKAGES:-data/scripts/corpus_packages.tsv}; MAX_FILES=${MAX_FILES:-0} ;;
  smoke)  # three small packages of the list, the first 25 files of each; more held out so val is not empty
    PACKAGES=${PACKAGES:-$OUT/smoke_packages.tsv}; MAX_FILES=${MAX_FILES:-25}; VAL_PERMILLE=${VAL_PERMILLE_SMOKE:-150}
    mkdir -p "$OUT"
    grep -E '^(debian-policy|developers-reference|perl-doc) ' data/scripts/corpus_packages.tsv > "$OUT/smoke_packages.tsv" ;;
  *) echo "make_corpus: SCALE must be full or smoke, not $SCALE" >&2; exit 2 ;;
esac
[ -x "$BIN/mlkv-data" ] || { echo "make_corpus: $BIN/mlkv-data is missing: build it first (ninja -C $BUILD mlkv-data)" >&2; exit 1; }
for tool in apt-get dpkg-deb python3 sha256sum; do
  command -v "$tool" > /dev/null || { echo "make_corpus: $tool is missing (a Debian system is needed)" >&2; exit 1; }
done
start=$(date +%s)
stage() { echo "== make_corpus [$(( $(date +%s) - start ))s] $*"; }
packages() { grep -v '^\s*#' "$PACKAGES" | awk 'NF { print $1, $2 }'; }
mkdir -p "$OUT/debs" "$OUT/unpacked" "$OUT/licences"

stage "1/5 download ($(packages | wc -l) packages, pinned versions)"
while read -r pkg ver; do
  stamp="$OUT/debs/$pkg.deb-name"
  if [ -f "$stamp" ] && [ -f "$OUT/debs/$(cat "$stamp")" ]; then continue; fi
  before=$(ls "$OUT/debs")
  (cd "$OUT/debs" && apt-get download -q "$pkg=$ver" 2>&1 | grep -v 'unsandboxed' || true)
  deb=$(comm -13 <(echo "$before") <(ls "$OUT/debs") | grep '\.deb$' | head -1 || true)
  [ -z "$deb" ] && deb=$(cd "$OUT/debs" && ls | grep -E "^${pkg//+/\\+}_.*\.deb$" | head -1 || true)
  [ -n "$deb" ] || { echo "make_corpus: apt-get download $pkg=$ver failed (is the version still in the archive? apt-cache policy $pkg)" >&2; exit 1; }
  got="$(dpkg-deb -f "$OUT/debs/$deb" Package) $(dpkg-deb -f "$OUT/debs/$deb" Version)"
  [ "$got" = "$pkg $ver" ] || { echo "make_corpus: $deb is '$got', expected '$pkg $ver'" >&2; exit 1; }
  echo "$deb" > "$stamp"
done < <(packages)

stage "2/5 unpack and check licences"
while read -r pkg ver; do
  deb="$OUT/debs/$(cat "$OUT/debs/$pkg.deb-name")"
  if [ ! -f "$OUT/unpacked/$pkg.ok" ]; then
    rm -rf "$OUT/unpacked/$pkg" && mkdir -p "$OUT/unpacked/$pkg"
    dpkg-deb -x "$deb" "$OUT/unpacked/$pkg"
    touch "$OUT/unpacked/$pkg.ok"
  fi
  copyright="$OUT/unpacked/$pkg/usr/share/doc/$pkg/copyright"
  docdir="$OUT/unpacked/$pkg/usr/share/doc/$pkg"
  if [ ! -f "$copyright" ] && [ -L "$docdir" ]; then
    # Debian lets a package's doc directory be a link to another binary package's of the same
    # source (manpages-dev -> manpages), whose copyright file covers both: read that one.
    sibling=$(basename "$(readlink "$docdir")")
    copyright="$OUT/unpacked/$sibling/usr/share/doc/$sibling/copyright"
    if [ ! -f "$copyright" ]; then  # not in the list: fetch it (same source, same version) for that file alone
      only="$OUT/licence-only/$sibling"
      if [ ! -f "$only/copyright" ]; then
        rm -rf "$only" && mkdir -p "$only/deb"
        (cd "$only/deb" && apt-get download -q "$sibling=$ver" 2>&1 | grep -v 'unsandboxed' || true)
        debs=("$only"/deb/*.deb)
        [ -f "${debs[0]}" ] || { echo "make_corpus: $pkg's doc directory links to $sibling, and apt-get download $sibling=$ver failed" >&2; exit 1; }
        dpkg-deb -x "${debs[0]}" "$only/x"
        cp "$only/x/usr/share/doc/$sibling/copyright" "$only/copyright" ||
          { echo "make_corpus: $sibling=$ver has no usr/share/doc/$sibling/copyright either; drop $pkg from $PACKAGES" >&2; exit 1; }
        rm -rf "$only/x"
      fi
      copyright="$only/copyright"
    fi
  fi
  [ -f "$copyright" ] || { echo "make_corpus: $pkg has no usr/share/doc/$pkg/copyright: its licence cannot be checked; drop it from $PACKAGES" >&2; exit 1; }
  cp "$copyright" "$OUT/licences/$pkg.copyright"
done < <(packages)

stage "3/5 clean to prose (seed $SEED, $VAL_PERMILLE/1000 of documents held out)"
inputs=$(cat "$PACKAGES" data/scripts/corpus_clean.py | sha256sum | cut -c1-16)-$SEED-$VAL_PERMILLE-$MAX_FILES
if [ "$(cat "$OUT/text/inputs" 2>/dev/null)" != "$inputs" ]; then
  rm -rf "$OUT/text" "$OUT/train" "$OUT/val" "$OUT/manifest.json"
  python3 data/scripts/corpus_clean.py --packages "$PACKAGES" --root "$OUT/unpacked" --out "$OUT/text.partial" \
    --seed "$SEED" --val-permille "$VAL_PERMILLE" --max-files "$MAX_FILES"
  echo "$inputs" > "$OUT/text.partial/inputs"
  mv "$OUT/text.partial" "$OUT/text"
fi

stage "4/5 tokenize ($TOKENIZER, gzip $COMPRESS)"
if [ ! -f "$OUT/tokens.ok" ]; then
  rm -rf "$OUT/train" "$OUT/val" "$OUT/tokenize.log"
  for split in train val; do
    while read -r pkg ver; do
      jsonl="$OUT/text/$split/$pkg.jsonl"
      [ -s "$jsonl" ] || continue  # no document of this package fell into this split
      printf '%s %s ' "$split" "$pkg" >> "$OUT/tokenize.log"
      "$BIN/mlkv-data" tokenize --tokenizer "$TOKENIZER" --prefix "$pkg" --compress "$COMPRESS" \
        --chunk-tokens 16384 "$jsonl" "$OUT/$split" | head -1 >> "$OUT/tokenize.log"
    done < <(packages)
    "$BIN/mlkv-data" verify "$OUT/$split" | tail -1
  done
  touch "$OUT/tokens.ok"
fi

stage "5/5 manifest"
python3 - "$OUT" "$PACKAGES" "$SEED" "$VAL_PERMILLE" "$TOKENIZER" <<'EOF'
import hashlib, json, os, re, sys
out, packages, seed, permille, tokenizer = sys.argv[1:]
sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
stats = json.load(open(os.path.join(out, "text", "clean_stats.json")))
tokens = {}
for line in open(os.path.join(out, "tokenize.log")):
    split, pkg, rest = line.split(" ", 2)
    tokens[(split, pkg)] = int(re.match(r"imported (\d+) tokens", rest).group(1))
rows = []
for line in open(packages):
    line = line.split("#", 1)[0].split()
    if not line:
        continue
    pkg, ver, licence, globs = line
    deb = open(os.path.join(out, "debs", pkg + ".deb-name")).read().strip()
    cr = os.path.join(out, "licences", pkg + ".copyright")
    lic_lines = sorted({l.split(":", 1)[1].strip() for l in open(cr, errors="replace") if l.startswith("License:")} - {""})
    st = stats[pkg]
    row = {"package": pkg, "version": ver, "licence": licence, "copyright_licences": lic_lines,
           "copyright_sha256": sha(cr), "deb": deb, "deb_sha256": sha(os.path.join(out, "debs", deb)),
           "globs": globs.split(","), "files": st["files"], "bytes_in": st["bytes_in"]}
    for split in ("train", "val"):
        row[split] = dict(st[split], tokens=tokens.get((split, pkg), 0))
    rows.append(row)
total = {s: {k: sum(r[s][k] for r in rows) for k in ("documents", "bytes", "tokens")} for s in ("train", "val")}
manifest = {"what": "English prose from Debian documentation packages (data/scripts/make_corpus.sh)",
            "seed": int(seed), "val_permille": int(permille), "split": "by document: sha256('SEED:package:path') mod 1000 < val_permille",
            "tokenizer": tokenizer, "tokenizer_sha256": sha(tokenizer), "total": total, "packages": rows}
json.dump(manifest, open(os.path.join(out, "manifest.json"), "w"), indent=1)
print(f"make_corpus: train {total['train']['tokens']:,} tokens in {total['train']['documents']:,} documents "
      f"({total['train']['bytes']:,} bytes of text), val {total['val']['tokens']:,} tokens in {total['val']['documents']:,} documents; "
      f"{len(rows)} packages")
EOF
stage "done: $OUT/train, $OUT/val, $OUT/manifest.json"
