#!/usr/bin/env python3
"""Figures from the benchmark CSVs (matplotlib). One function and one subcommand per figure.

  scripts/plot.py decode CSV PNG   memory and decode throughput against batch, one line per plan
"""
import argparse
import csv
from collections import defaultdict


PEER_STYLE = {"hf_generate": "--", "torch_sdpa": ":", "torch_sdpa_graph": "-."}  # scripts/bench_decode_hf.py


def plot_decode(args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    all_rows = list(csv.DictReader(open(args.csv)))
    rows = [r for r in all_rows if r.get("impl", "mlkv") == "mlkv"]
    label = lambda r: r["plan"].split(" (")[0] + (" (1B)" if "1b" in r["config"] else "")  # noqa: E731
    # the whole-GPU sweep (largest budget) carries every batch of the 16 GiB one
    budget = max(float(r["budget_gib"]) for r in rows)
    lines = defaultdict(list)
    for r in rows:
        if float(r["budget_gib"]) == budget:
            lines[label(r)].append(r)
    peers = defaultdict(list)  # (impl, plan) -> rows; the peer runs at one budget
    for r in all_rows:
        if r.get("impl") in PEER_STYLE:
            peers[(r["impl"], label(r))].append(r)
    fig, (mem, tput) = plt.subplots(1, 2, figsize=(13, 5))
    color = {}
    for plan, rs in sorted(lines.items()):
        rs.sort(key=lambda r: int(r["batch"]))
        b = [int(r["batch"]) for r in rs]
        per_seq = float(rs[0]["kv_bytes_per_token"]) * float(rs[0]["context"]) / 2**30
        w = float(rs[0]["weights_gib"])
        color[plan] = mem.plot(b, [w + x * per_seq for x in b], marker=".", label=plan)[0].get_color()
        tput.plot(b, [float(r["tokens_per_s"]) for r in rs], marker=".", label=plan, color=color[plan])
    for (impl, plan), rs in sorted(peers.items()):
        rs.sort(key=lambda r: int(r["batch"]))
        b = [int(r["batch"]) for r in rs]
        style = dict(ls=PEER_STYLE[impl], marker="x", ms=4, lw=1.2, color=color.get(plan), label=f"{plan} {impl}")
        tput.plot(b, [float(r["tokens_per_s"]) for r in rs], **style)
        if impl == "hf_generate" and all(r["peak_gib"] for r in rs):  # HF's peak: its prefill's temporaries
            mem.plot(b, [float(r["peak_gib"]) for r in rs], **style)
    mem.axhline(16, color="grey", ls="--", lw=0.8)
    for ax, yl in ((mem, "weights + KV cache (GiB); HF: peak allocated"), (tput, "decode tokens/s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch (sequences of 2048 tokens)")
        ax.set_ylabel(yl)
        ax.grid(True, which="both", lw=0.3)
    tput.legend(fontsize=6, ncol=2)
    peer_note = "; dashed: HF generate, dotted: torch SDPA (dash-dot: CUDA graph), 16 GiB" if peers else ""
    fig.suptitle("mlkv decode at context 2048, bf16, one GPU" + peer_note, fontsize=10)
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
