#!/usr/bin/env bash
# Builds the paper-reproduction corpus (issue 14): English prose from Debian documentation packages,
# tokenized with the bundled GPT-NeoX tokenizer into HDF5 shards, with a validation split by document.
#
#   BUILD=build OUT=data/corpus bash data/scripts/make_corpus.sh
#   SCALE=smoke OUT=runs/smoke-corpus bash data/scripts/make_corpus.sh   # 3 packages, 25 files each
#   OUT=data/corpus bash data/scripts/make_corpus.sh pack     # -> $PACK (.corpus/corpus.tar.xz)
#   OUT=data/corpus bash data/scripts/make_corpus.sh unpack   # where there is no network (the GPU host)
#
# pack: after a full build, the cleaned text (stage 3's output), the licences, manifest.json and
# the sha256 of every shard, as one tar.xz (xz -9e: the text packs far smaller than the shards).
# unpack: extracts it into $OUT, runs stage 4 (tokenize, in parallel) and checks that every shard
# has the packed sha256, so the shards are byte for byte the ones the build made.
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
MODE=${1:-build}
PACK=${PACK:-.corpus/corpus.tar.xz}
SEED=${SEED:-1234}
VAL_PERMILLE=${VAL_PERMILLE:-20}
COMPRESS=${COMPRESS:-6}
JOBS=${JOBS:-$(nproc)}
MIN_PART_TOKENS=${MIN_PART_TOKENS:-2049}  # one sample at seq_len 2048
TOKENIZER=data/tokenizer/gpt-neox-20b.json
case "$SCALE" in
  full) PACKAGES=${PACKAGES:-data/scripts/corpus_packages.tsv}; MAX_FILES=${MAX_FILES:-0} ;;
  smoke)  # three small packages of the list, the first 25 files of each; more held out so val is not empty
    PACKAGES=${PACKAGES:-$OUT/smoke_packages.tsv}; MAX_FILES=${MAX_FILES:-25}; VAL_PERMILLE=${VAL_PERMILLE_SMOKE:-150}
    mkdir -p "$OUT"
    grep -E '^(debian-policy|developers-reference|perl-doc) ' data/scripts/corpus_packages.tsv > "$OUT/smoke_packages.tsv" ;;
  *) echo "make_corpus: SCALE must be full or smoke, not $SCALE" >&2; exit 2 ;;
esac
case "$MODE" in build|pack|unpack) ;; *) echo "make_corpus: the mode must be build, pack or unpack, not $MODE" >&2; exit 2 ;; esac
[ -x "$BIN/mlkv-data" ] || { echo "make_corpus: $BIN/mlkv-data is missing: build it first (ninja -C $BUILD mlkv-data)" >&2; exit 1; }
tools="xz tar sha256sum"; [ "$MODE" = build ] && tools="apt-get dpkg-deb python3 sha256sum"  # unpack: no Debian tools
for tool in $tools; do
  command -v "$tool" > /dev/null || { echo "make_corpus: $tool is missing (a Debian system is needed)" >&2; exit 1; }
done
start=$(date +%s)
stage() { echo "== make_corpus [$(( $(date +%s) - start ))s] $*"; }
packages() { grep -v '^\s*#' "$PACKAGES" | awk 'NF { print $1, $2 }'; }
shard_sums() { (cd "$OUT" && find train val -name '*.h5' | sort | xargs sha256sum); }

if [ "$MODE" = pack ]; then
  [ -f "$OUT/manifest.json" ] && [ -f "$OUT/tokens.ok" ] || { echo "make_corpus: $OUT has no finished corpus to pack: build it first" >&2; exit 1; }
  stage "pack $OUT -> $PACK"
  shard_sums > "$OUT/shards.sha256"
  mkdir -p "$(dirname "$PACK")"
  tar -C "$OUT" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf - text licences manifest.json shards.sha256 \
    | xz -9e -T1 > "$PACK.partial"
  mv "$PACK.partial" "$PACK"
  echo "make_corpus: $PACK: $(stat -c %s "$PACK") bytes"
  exit 0
fi
if [ "$MODE" = unpack ]; then
  [ -f "$PACK" ] || { echo "make_corpus: no pack at $PACK (make it with 'make_corpus.sh pack' where the corpus was built)" >&2; exit 1; }
  if [ ! -f "$OUT/text/inputs" ]; then
    stage "unpack $PACK -> $OUT"
    rm -rf "$OUT/text.partial" && mkdir -p "$OUT/text.partial"
    xz -dc "$PACK" | tar -C "$OUT/text.partial" -xf -
    for f in licences manifest.json shards.sha256; do rm -rf "${OUT:?}/$f"; mv "$OUT/text.partial/$f" "$OUT/"; done
    mv "$OUT/text.partial/text" "$OUT/text" && rmdir "$OUT/text.partial"
  fi
else
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
  link="$OUT/unpacked/$pkg/usr/share/doc/$pkg" other=""
  if [ -L "$link" ]; then
    # Policy 12.5: a package may symlink its doc directory to that of a package it depends on from
    # the same source (manpages-dev -> manpages); that package's copyright is then the licence.
    other=$(basename "$(readlink "$link")")
    copyright="$OUT/unpacked/$other/usr/share/doc/$other/copyright"
    if [ ! -f "$copyright" ]; then  # not in the list (cmake-doc -> cmake-data): that package, same version, for this file alone
      only="$OUT/licence-only/$other"
      if [ ! -f "$only/copyright" ]; then
        rm -rf "$only" && mkdir -p "$only/deb"
        (cd "$only/deb" && apt-get download -q "$other=$ver" 2>&1 | grep -v 'unsandboxed' || true)
        debs=("$only"/deb/*.deb)
        [ -f "${debs[0]}" ] && dpkg-deb -x "${debs[0]}" "$only/x" &&
          cp "$only/x/usr/share/doc/$other/copyright" "$only/copyright" && rm -rf "$only/x" || true
      fi
      copyright="$only/copyright"
    fi
  fi
  [ -f "$copyright" ] || { echo "make_corpus: $pkg: no copyright file (its doc directory links to ${other:-nothing}, and $other=$ver gave none): its licence cannot be checked; drop it from $PACKAGES" >&2; exit 1; }
  cp "$copyright" "$OUT/licences/$pkg.copyright"
done < <(packages)

stage "3/5 clean to prose (seed $SEED, $VAL_PERMILLE/1000 of documents held out)"
inputs=$(cat "$PACKAGES" data/scripts/corpus_clean.py | sha256sum | cut -c1-16)-$SEED-$VAL_PERMILLE-$MAX_FILES
if [ "$(cat "$OUT/text/inputs" 2>/dev/null)" != "$inputs" ]; then
  rm -rf "$OUT/text" "$OUT/train" "$OUT/val" "$OUT/manifest.json" "$OUT/tokens.ok"  # new text: new shards
  python3 data/scripts/corpus_clean.py --packages "$PACKAGES" --root "$OUT/unpacked" --out "$OUT/text.partial" \
    --seed "$SEED" --val-permille "$VAL_PERMILLE" --max-files "$MAX_FILES"
  echo "$inputs" > "$OUT/text.partial/inputs"
  mv "$OUT/text.partial" "$OUT/text"
fi

fi  # build mode: stages 1-3

stage "4/5 tokenize ($TOKENIZER, gzip $COMPRESS, $JOBS jobs)"
# One mlkv-data process per (split, package): a package's shards depend only on its own text, so
# running them in parallel gives the same bytes as running them one after another.
tokenize_one() {  # SPLIT PACKAGE: $OUT/text/SPLIT/PACKAGE.jsonl -> $OUT/SPLIT/PACKAGE-NNNNN.h5
  "$BIN/mlkv-data" tokenize --tokenizer "$TOKENIZER" --prefix "$2" --compress "$COMPRESS" \
    --chunk-tokens 16384 "$OUT/text/$1/$2.jsonl" "$OUT/$1" > "$OUT/tokenize.parts/$1.$2.log" \
    || { echo "make_corpus: mlkv-data tokenize of $OUT/text/$1/$2.jsonl failed" >&2; return 1; }
}
export -f tokenize_one; export BIN TOKENIZER COMPRESS OUT
if [ ! -f "$OUT/tokens.ok" ]; then
  rm -rf "$OUT/train" "$OUT/val" "$OUT/tokenize.log" "$OUT/tokenize.parts"
  mkdir -p "$OUT/train" "$OUT/val" "$OUT/tokenize.parts"
  for split in train val; do
    while read -r pkg ver; do
      [ -s "$OUT/text/$split/$pkg.jsonl" ] && echo "$split $pkg"  # empty: no document fell into this split
    done < <(packages)
  done > "$OUT/tokenize.parts/jobs"
  xargs -P "$JOBS" -L 1 bash -c 'tokenize_one "$@"' _ < "$OUT/tokenize.parts/jobs"
  while read -r split pkg; do  # the log in list order, whatever order the jobs ended in
    printf '%s %s %s\n' "$split" "$pkg" "$(head -1 "$OUT/tokenize.parts/$split.$pkg.log")"
  done < "$OUT/tokenize.parts/jobs" > "$OUT/tokenize.log"
  # Samples never cross shards, so a package split shorter than one training sample (seq_len 2048
  # + 1 tokens) cannot be read at all: the loader refuses it. Such parts are dropped, and said so.
  while read -r split pkg rest; do
    n=$(sed -n 's/^imported \([0-9]*\) tokens.*/\1/p' <<<"$rest")
    if [ -n "$n" ] && [ "$n" -lt "$MIN_PART_TOKENS" ]; then
      rm -f "$OUT/$split/$pkg"-*.h5
      echo "$split $pkg dropped: $n tokens, fewer than one sample of $MIN_PART_TOKENS"
    else
      echo "$split $pkg $rest"
    fi
  done < "$OUT/tokenize.log" > "$OUT/tokenize.log.kept" && mv "$OUT/tokenize.log.kept" "$OUT/tokenize.log"
  grep ' dropped: ' "$OUT/tokenize.log" | sed 's/^/make_corpus: /' || true
  for split in train val; do "$BIN/mlkv-data" verify "$OUT/$split" | tail -1; done
  if [ "$MODE" = unpack ]; then
    shard_sums | cmp -s - "$OUT/shards.sha256" || { echo "make_corpus: the shards made from $PACK differ from the packed sha256s" \
      "($OUT/shards.sha256; diff <(cd $OUT && sha256sum train/* val/*) $OUT/shards.sha256): not the corpus that was built" >&2; exit 1; }
    echo "make_corpus: all $(wc -l < "$OUT/shards.sha256") shards match the sha256s of the build"
  fi
  touch "$OUT/tokens.ok"
fi
[ "$MODE" = unpack ] && { stage "done: $OUT/train, $OUT/val (manifest.json from the pack)"; exit 0; }

stage "5/5 manifest"
python3 - "$OUT" "$PACKAGES" "$SEED" "$VAL_PERMILLE" "$TOKENIZER" <<'EOF'
import hashlib, json, os, re, sys
out, packages, seed, permille, tokenizer = sys.argv[1:]
sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
stats = json.load(open(os.path.join(out, "text", "clean_stats.json")))
tokens = {}
for line in open(os.path.join(out, "tokenize.log")):
    split, pkg, rest = line.split(" ", 2)
    m = re.match(r"imported (\d+) tokens", rest)
    tokens[(split, pkg)] = int(m.group(1)) if m else 0  # "dropped: N tokens, ...": no shard kept
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
