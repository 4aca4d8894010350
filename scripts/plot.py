#!/usr/bin/env python3
"""Figures from the benchmark CSVs (matplotlib). One function and one subcommand per figure.

  scripts/plot.py decode CSV PNG   memory and decode throughput against batch, one line per plan
  scripts/plot.py paper CSV PNG [--runs DIR --curves PNG]
                                   validation loss against KV-cache bytes per token, Pareto front
                                   marked; with --runs, the uptraining loss curves of every run
"""
import argparse
import csv
from collections import defaultdict


def plot_decode(args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in csv.DictReader(open(args.csv)) if r.get("impl", "mlkv") == "mlkv"]
    # the whole-GPU sweep (largest budget) carries every batch of the 16 GiB one
    budget = max(float(r["budget_gib"]) for r in rows)
    lines = defaultdict(list)
    for r in rows:
        if float(r["budget_gib"]) == budget:
            lines[r["plan"] + (" (1B)" if "1b" in r["config"] else "")].append(r)
    fig, (mem, tput) = plt.subplots(1, 2, figsize=(13, 5))
    for plan, rs in sorted(lines.items()):
        rs.sort(key=lambda r: int(r["batch"]))
        b = [int(r["batch"]) for r in rs]
        per_seq = float(rs[0]["kv_bytes_per_token"]) * float(rs[0]["context"]) / 2**30
        w = float(rs[0]["weights_gib"])
        mem.plot(b, [w + x * per_seq for x in b], marker=".", label=plan)
        tput.plot(b, [float(r["tokens_per_s"]) for r in rs], marker=".", label=plan)
    mem.axhline(16, color="grey", ls="--", lw=0.8)
    for ax, yl in ((mem, "weights + KV cache (GiB)"), (tput, "decode tokens/s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch (sequences of 2048 tokens)")
        ax.set_ylabel(yl)
        ax.grid(True, which="both", lw=0.3)
    tput.legend(fontsize=7)
    fig.suptitle("mlkv decode at context 2048, bf16, one GPU")
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print("wrote", args.png)


def paper_front(points):
    """The runs no other run beats on both cache size and loss (lower is better in both)."""
    front, best = [], float("inf")
    for kv, loss, name in sorted(points):
        if loss < best:
            front.append((kv, loss, name))
            best = loss
    return front


def plot_paper(args):
    import json
    import os
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = list(csv.DictReader(open(args.csv)))
    if not rows:
        raise SystemExit(f"plot.py paper: {args.csv} has no rows")
    base = [r for r in rows if r["run"] == "base"]
    runs = [r for r in rows if r["run"] != "base"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = {"true": ("o", "post-RoPE keys shared (ours)"), "false": ("s", "un-rotated keys (seed code, --merge paper)")}
    for rope, (marker, label) in styles.items():
        pts = [r for r in runs if r["rope_shared_keys"] == rope]
        ax.scatter([float(r["kv_bytes_per_token"]) for r in pts], [float(r["val_loss"]) for r in pts],
                   marker=marker, label=label, zorder=3)
        for r in pts:
            ax.annotate(r["run"], (float(r["kv_bytes_per_token"]), float(r["val_loss"])), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    front = paper_front([(float(r["kv_bytes_per_token"]), float(r["val_loss"]), r["run"]) for r in runs])
    ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=0.8, label="Pareto front", zorder=2)
    for r in base:
        ax.axhline(float(r["val_loss"]), color="grey", lw=0.8, ls=":", label="MHA base before uptraining")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("KV-cache bytes per token (bf16)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Uptrained KV plans: validation loss against cache size")
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print("wrote", args.png)
    if not args.curves:
        return
    if not args.runs:
        raise SystemExit("plot.py paper: --curves needs --runs DIR (the runs' metrics.jsonl)")
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in runs:
        path = os.path.join(args.runs, r["run"], "metrics.jsonl")
        try:
            recs = [json.loads(l) for l in open(path) if l.strip()]
        except (OSError, ValueError) as e:
            raise SystemExit(f"plot.py paper: {path}: {e}")
        pts = [(m["step"], m["loss"]) for m in recs if "loss" in m and "step" in m]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1,
                ls="--" if r["rope_shared_keys"] == "false" else "-", label=r["run"])
    for r in base:
        ax.axhline(float(r["val_loss"]), color="grey", lw=0.8, ls=":", label="MHA base, validation")
    ax.set_xlabel("uptraining step")
    ax.set_ylabel("training loss")
    ax.grid(True, lw=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Uptraining from the MHA base")
    fig.tight_layout()
    fig.savefig(args.curves, dpi=120)
    print("wrote", args.curves)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="figure", required=True)
    d = sub.add_parser("decode", help="decode memory and throughput against batch")
    d.add_argument("csv")
    d.add_argument("png")
    d.set_defaults(func=plot_decode)
    q = sub.add_parser("paper", help="validation loss against KV-cache size, and uptraining curves")
    q.add_argument("csv")
    q.add_argument("png")
    q.add_argument("--runs", help="directory holding RUN/metrics.jsonl for every run of the CSV")
    q.add_argument("--curves", help="also write the uptraining loss curves to this PNG")
    q.set_defaults(func=plot_paper)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
