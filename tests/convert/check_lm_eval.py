#!/usr/bin/env python3
"""Checks lm-eval's per-sample loglikelihoods (--log_samples) against our own forward.

For every request lm-eval logged (context, continuation) the tokens are built as lm-eval's HF model
builds them (trailing spaces of the context move to the continuation; the continuation's tokens are
those of context + continuation after the context's own), the logits of that sequence come from
`mlkv-eval --dump-logits` on the checkpoint the export was made from, and

    sum over continuation tokens of log_softmax(logits)[token]      must equal lm-eval's number
    every continuation token being the argmax                       must equal lm-eval's is_greedy

The number of requests must be what the task's data implies (every choice of every question, every
loglikelihood document), so a sample that lm-eval dropped is an error too.

  check_lm_eval.py --samples DIR --export HF_DIR --mlkv-eval BIN --ckpt CKPT --task-dir DIR [--tol 1e-4]
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from transformers import AutoTokenizer


def encode_pair(tok, context, continuation):
    """lm-eval's HFLM._encode_pair with add_special_tokens=False (its default for causal models)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok.encode(context + continuation, add_special_tokens=False)
    ctx = tok.encode(context, add_special_tokens=False)
    if not ctx:  # lm-eval scores an empty context after the end-of-text token
        return [tok.eos_token_id], whole
    return ctx, whole[len(ctx):]


def our_loglikelihood(args, ctx, cont, scratch):
    tokens = ctx + cont
    npy = os.path.join(scratch, "logits.npy")
    cmd = [args.mlkv_eval, "--ckpt", args.ckpt, "--dump-logits", npy, "--tokens", ",".join(map(str, tokens[:-1]))]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"check_lm_eval: {' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    logits = np.load(npy).astype(np.float64)  # [T, V]
    rows = logits[len(ctx) - 1:]  # position i predicts token i + 1
    logz = np.log(np.exp(rows - rows.max(axis=1, keepdims=True)).sum(axis=1)) + rows.max(axis=1)
    ll = float(sum(rows[i, t] - logz[i] for i, t in enumerate(cont)))
    greedy = all(int(rows[i].argmax()) == t for i, t in enumerate(cont))
    return ll, greedy


def expected_requests(task_dir, task):
    with open(os.path.join(task_dir, f"{task}.jsonl")) as f:
        docs = [json.loads(line) for line in f if line.strip()]
    return sum(len(d["choices"]) if "choices" in d else 1 for d in docs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", required=True, help="lm_eval's --output_path")
    p.add_argument("--export", required=True)
    p.add_argument("--mlkv-eval", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--task-dir", required=True)
    p.add_argument("--tol", type=float, default=1e-4)
    args = p.parse_args()
    tok = AutoTokenizer.from_pretrained(args.export, trust_remote_code=True)  # as lm-eval loads it
    files = sorted(glob.glob(os.path.join(args.samples, "**", "samples_*.jsonl"), recursive=True))
    if not files:
        sys.exit(f"check_lm_eval: no samples_*.jsonl under {args.samples} (was lm_eval run with --log_samples?)")
    worst, bad, tasks = 0.0, [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for path in files:
            task = os.path.basename(path)[len("samples_"):].rsplit("_", 1)[0]
            n = 0
            for line in open(path):
                s = json.loads(line)
                for key in sorted(s["arguments"], key=lambda k: int(k.rsplit("_", 1)[1])):
                    i = int(key.rsplit("_", 1)[1])
                    a = s["arguments"][key]
                    theirs_ll, theirs_greedy = s["resps"][i][0]
                    theirs_ll, theirs_greedy = float(theirs_ll), str(theirs_greedy) == "True"
                    ctx, cont = encode_pair(tok, a["arg_0"], a["arg_1"])
                    ll, greedy = our_loglikelihood(args, ctx, cont, scratch)
                    diff = abs(ll - theirs_ll)
                    worst = max(worst, diff)
                    n += 1
                    if diff > args.tol or greedy != theirs_greedy:
                        bad.append(f"{task} doc {s['doc_id']} {key} {a['arg_1']!r}: lm-eval {theirs_ll:.6f} "
                                   f"greedy {theirs_greedy}, ours {ll:.6f} greedy {greedy} (|diff| {diff:.2e})")
            want = expected_requests(args.task_dir, task)
            if n != want:
                bad.append(f"{task}: {n} requests logged, the data implies {want}")
            tasks[task] = n
    for b in bad:
        print("MISMATCH", b)
    print(f"{'FAILED' if bad else 'ok'}: {sum(tasks.values())} loglikelihoods ({', '.join(f'{t} {n}' for t, n in sorted(tasks.items()))}) "
          f"against mlkv-eval --dump-logits, max |diff| {worst:.2e} (tolerance {args.tol:g})")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
