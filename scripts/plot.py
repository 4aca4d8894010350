#!/usr/bin/env python3
"""Figures from the benchmark CSVs (matplotlib). One function and one subcommand per figure.

  scripts/plot.py decode CSV PNG   memory and decode throughput against batch, one line per plan
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="figure", required=True)
    d = sub.add_parser("decode", help="decode memory and throughput against batch")
    d.add_argument("csv")
    d.add_argument("png")
    d.set_defaults(func=plot_decode)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
