#!/usr/bin/env python3
"""Reads a run's TensorBoard event files as TensorBoard does and checks them against metrics.jsonl.

  check_tensorboard.py LOG_DIR [--expect-orphans]

For both of TensorBoard's readers (event_accumulator, which purges with SessionLog START, and
plugin_event_accumulator, behind the scalars dashboard), every tag must have exactly one point per
step, at the steps metrics.jsonl has, with the value metrics.jsonl has (as float32, which is what an
event stores). With --expect-orphans the files must also hold stale points (a step logged twice) when
read without purging: the run was killed after its last checkpoint, so the check above is not vacuous.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np
from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator
from tensorboard.util import tensor_util

# TensorBoard tag -> metrics.jsonl key (core/metrics.cpp writes both)
TAGS = {"train/loss": "loss", "train/lr": "lr", "train/grad_norm": "grad_norm", "val/loss": "val_loss",
        "val/ppl": "val_ppl"}


def expected(log_dir):
    want = {tag: {} for tag in TAGS}
    with open(os.path.join(log_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            for tag, key in TAGS.items():
                if r.get(key) is not None:
                    if r["step"] in want[tag]:
                        sys.exit(f"check_tensorboard: metrics.jsonl has step {r['step']} of {key} twice")
                    want[tag][r["step"]] = float(np.float32(r[key]))
    return want


def scalars(log_dir, plugin, purge=True):
    """{tag: [(step, value), ...]} in the order the reader keeps them."""
    size = {"scalars": 0, "tensors": 0}  # 0: keep every point (no reservoir sampling)
    if plugin:
        acc = plugin_event_accumulator.EventAccumulator(log_dir, size_guidance=size, purge_orphaned_data=purge)
        acc.Reload()
        return {t: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(t)]
                for t in acc.Tags()["tensors"]}
    acc = event_accumulator.EventAccumulator(log_dir, size_guidance=size, purge_orphaned_data=purge)
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log_dir")
    p.add_argument("--expect-orphans", action="store_true")
    args = p.parse_args()
    files = sorted(glob.glob(os.path.join(args.log_dir, "events.out.tfevents.*")))
    want = expected(args.log_dir)
    errors = []
    for plugin in (False, True):
        reader = "plugin_event_accumulator" if plugin else "event_accumulator"
        got = scalars(args.log_dir, plugin)
        for tag, points in want.items():
            have = got.get(tag, [])
            steps = [s for s, _ in have]
            if len(steps) != len(set(steps)):
                dup = sorted({s for s in steps if steps.count(s) > 1})
                errors.append(f"{reader}: {tag} has steps {dup} more than once")
            if sorted(set(steps)) != sorted(points):
                errors.append(f"{reader}: {tag} steps {sorted(set(steps))} but metrics.jsonl has {sorted(points)}")
            for s, v in have:
                if s in points and v != points[s]:
                    errors.append(f"{reader}: {tag} step {s} is {v!r}, metrics.jsonl {points[s]!r}")
        print(f"{reader}: {', '.join(f'{t} {len(got.get(t, []))} points' for t in want)}")
    if args.expect_orphans:
        raw = scalars(args.log_dir, plugin=False, purge=False)["train/loss"]
        stale = len(raw) - len({s for s, _ in raw})
        print(f"without purging: train/loss {len(raw)} points, {stale} of them stale")
        if stale == 0:
            errors.append("read without purging, no step is logged twice: the run was not killed after a checkpoint")
    for e in errors:
        print("ERROR", e)
    n = sum(len(v) for v in want.values())
    print(f"{'FAILED' if errors else 'ok'}: {len(files)} event files, {n} points of {len(want)} tags equal metrics.jsonl, one per step")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
