#!/usr/bin/env python3
"""Compares mlkv-data's BPE tokenizer with HF `tokenizers` on generated and given text.

  pip install tokenizers   # only for this check and for making the golden fixtures
  python3 data/scripts/compare_tokenizer.py build/bin/mlkv-data data/tokenizer/gpt-neox-20b.json [FILE...]

Texts: every Unicode code point in letter/number/space/mark contexts, random mixtures of
tricky characters (spaces, combining marks, Hangul jamo, contractions, digits, added tokens),
and each FILE's paragraphs. Prints the first mismatches; exit 1 when any.
"""
import json
import random
import subprocess
import sys
import tempfile

from tokenizers import Tokenizer


def codepoint_texts():
    cps = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    for i in range(0, len(cps), 40):
        yield "".join(" %sx%s1%s'%s " % (chr(c), chr(c), chr(c), chr(c)) for c in cps[i:i + 40])


def random_texts(count, seed=7):
    rng = random.Random(seed)
    pieces = [" ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "\u3000", "\u2009", "\u0085",
              "\u001c", "a", "Z", "é", "e\u0301", "e\u0327\u0301", "\u0301", "\u0345\u0301", "ß",
              "ſ", "Å", "A\u030a", "\u1100\u1161\u11a8", "\u1100", "\u1161", "\uac00\u11a8",
              "한", "'s", "'S", "'ll", "'re", "'ve", "'d", "'m", "'t", "'", "\"", "9", "٣", "½",
              "Ⅻ", "１", "!", "?!", "...", "—", "€", "😀", "👨‍👩‍👧", "🏽", "<|endoftext|>",
              "<|padding|>", "<|endoftext", "中", "日本", "ا", "अ", "\u093f", "\u0e31", "\u200d",
              "\ufeff", "\x00", "\x7f", "word", " the", "The", "123", "3.14", "_", "__init__",
              "http://x.y/z?a=1", "\u00ad", "\u0338", "\u226f", "\u2126", "\u212b", "\u0958",
              "\u0f73", "\u1e9b\u0323", "\ud55c\u11c2", "\u0b47\u0b3e", "\u09c7\u09be"]
    for _ in range(count):
        yield "".join(rng.choice(pieces) for _ in range(rng.randint(1, 40)))


def file_texts(paths):
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        for block in text.split("\n\n"):
            if block:
                yield block


def main():
    binary, tokenizer_path, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    texts = list(codepoint_texts()) + list(random_texts(20000)) + list(file_texts(files))
    hf = Tokenizer.from_file(tokenizer_path)
    expected = [e.ids for e in hf.encode_batch(texts)]
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
        f.flush()
        out = subprocess.run([binary, "encode", "--tokenizer", tokenizer_path, "--jsonl", f.name],
                             check=True, capture_output=True, text=True).stdout
    got = [json.loads(line) for line in out.splitlines()]
    assert len(got) == len(texts), (len(got), len(texts))
    bad = [i for i in range(len(texts)) if got[i] != expected[i]]
    for i in bad[:10]:
        print("MISMATCH", repr(texts[i][:200]))
        print("   hf  ", expected[i][:60])
        print("   mlkv", got[i][:60])
    print("%d texts, %d tokens, %d mismatches" % (len(texts), sum(map(len, expected)), len(bad)))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
