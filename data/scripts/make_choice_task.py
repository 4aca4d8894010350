#!/usr/bin/env python3
"""Builds a zero-shot next-sentence task from held-out documents (lm-eval `multiple_choice` jsonl).

    make_choice_task.py VAL.jsonl... --out TASK.jsonl [--items N] [--seed S] [--lm-eval-yaml FILE]

Each item: "context" = up to three consecutive sentences of a held-out paragraph, "choices" = the
sentence that really follows plus three sentences of similar length drawn from OTHER held-out
documents, shuffled; "gold" = the index of the true one. Only validation documents are used, so no
model has trained on them. Deterministic: documents in the order given, then Python's
random.Random(seed). At most 4 items come from one document, so no single page dominates.

--lm-eval-yaml writes the matching lm-evaluation-harness task (name mlkv_next_sentence, metrics acc
and acc_norm, the data file by absolute path), to be used with `lm_eval --include_path DIR`.
"""
import argparse
import json
import os
import random
import re
import sys

SENTENCE = re.compile(r"(?<=[a-z0-9)\"'”’][.!?])\s+(?=[A-Z“\"(])")
PER_DOC = 4
N_CHOICES = 4


def sentences(paragraph):
    out = []
    for s in SENTENCE.split(paragraph):
        words = s.split()
        if 5 <= len(words) <= 50 and s[-1] in ".!?\"”’)":
            out.append(s.strip())
        else:
            out.append(None)  # breaks a run: a context must be consecutive real sentences
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="+", help="held-out documents, JSONL with a text field")
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--lm-eval-yaml", default="")
    args = ap.parse_args()

    docs = []  # per document: list of runs of consecutive sentences
    for path in args.inputs:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    docs.append([sentences(p) for p in json.loads(line)["text"].split("\n\n")])
    pool = [(d, s) for d, pars in enumerate(docs) for par in pars for s in par if s]
    rng = random.Random(args.seed)
    candidates = []
    for d, pars in enumerate(docs):
        spots = [(par, j) for par in pars for j in range(1, len(par)) if par[j] and par[j - 1]]
        rng.shuffle(spots)
        for par, j in spots[:PER_DOC]:
            start = j
            while start > 0 and par[start - 1] and j - start < 3:
                start -= 1
            candidates.append((d, " ".join(par[start:j]), par[j]))
    rng.shuffle(candidates)
    items = []
    for d, context, gold in candidates:
        if len(items) == args.items:
            break
        near = [s for dd, s in rng.sample(pool, min(len(pool), 400))
                if dd != d and 0.6 * len(gold) <= len(s) <= 1.6 * len(gold) and s != gold]
        if len(near) < N_CHOICES - 1:
            continue
        choices = [gold] + near[: N_CHOICES - 1]
        rng.shuffle(choices)
        items.append({"context": context, "choices": choices, "gold": choices.index(gold)})
    if len(items) < args.items:
        print(f"make_choice_task: only {len(items)} items from {len(docs)} documents (asked {args.items})", file=sys.stderr)
    if not items:
        sys.exit(1)
    with open(args.out, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    if args.lm_eval_yaml:
        with open(args.lm_eval_yaml, "w") as f:
            f.write(f"""task: mlkv_next_sentence
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(os.path.abspath(args.out))}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""")
    print(f"make_choice_task: {len(items)} items from {len(docs)} held-out documents -> {args.out}")


if __name__ == "__main__":
    main()
