#!/usr/bin/env python3
"""Checks that shards made by `mlkv-data tokenize --split paragraph` hold exactly HF's ids.

  python3 data/scripts/check_demo.py TOKENIZER_JSON TEXT1 SHARDS1 [TEXT2 SHARDS2 ...]
Each TEXT's blank-line separated paragraphs are encoded with HF `tokenizers`, each followed by
EOD (0); the result must equal the shards' tokens, read back with `mlkv-data export-raw`.
"""
import array
import os
import subprocess
import sys
import tempfile

from tokenizers import Tokenizer

MLKV_DATA = os.environ.get("MLKV_DATA", os.path.join(os.path.dirname(__file__), "../../build/bin/mlkv-data"))


def paragraphs(path):
    block = []
    with open(path, encoding="utf-8", newline="\n") as f:
        for line in f:
            line = line.rstrip("\n").rstrip("\r")
            if line.strip(" \t"):
                block.append(line)
            elif block:
                yield "\n".join(block)
                block = []
    if block:
        yield "\n".join(block)


def main():
    tok = Tokenizer.from_file(sys.argv[1])
    pairs = sys.argv[2:]
    for text_path, shards in zip(pairs[0::2], pairs[1::2]):
        expected = []
        for ids in tok.encode_batch(list(paragraphs(text_path))):
            expected.extend(ids.ids)
            expected.append(0)
        with tempfile.NamedTemporaryFile(suffix=".u32") as raw:
            subprocess.run([MLKV_DATA, "export-raw", shards, raw.name, "--dtype", "uint32"],
                           check=True, capture_output=True)
            got = array.array("I")
            got.frombytes(open(raw.name, "rb").read())
        same = list(got) == expected
        print("%s: %d tokens, %s HF tokenizers" % (shards, len(got), "equal to" if same else "DIFFERENT from"))
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
