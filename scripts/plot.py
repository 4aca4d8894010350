#!/usr/bin/env python3
"""Figures from the benchmark CSVs and training logs (matplotlib). One function and one subcommand per figure.

  scripts/plot.py decode CSV PNG   memory and decode throughput against batch, one line per plan
  scripts/plot.py paper CSV PNG [--runs DIR --curves PNG]
                                   validation loss against KV-cache bytes per token, Pareto front
                                   marked; with --runs, the uptraining loss curves of every run
  scripts/plot.py loss PNG RUN... [--chain] [--title T] [--size WxH]
                                   training loss (solid) and validation loss (dashed, squares) per run;
                                   RUN is a log directory, its metrics.jsonl, or a CSV with a step
                                   column and loss and/or val_loss columns

Bad input (a missing or unreadable file, no loss in it, a bad option) exits 2 naming the file.
"""
import argparse
import csv
import json
import os
import sys
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
    def train_losses(run):
        path = os.path.join(args.runs, run, "metrics.jsonl")
        try:
            recs = [json.loads(l) for l in open(path) if l.strip()]
        except (OSError, ValueError) as e:
            raise SystemExit(f"plot.py paper: {path}: {e}")
        return [(m["step"], m["loss"]) for m in recs if "loss" in m and "step" in m]

    fig, ax = plt.subplots(figsize=(9, 5.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # 14 runs: tab10 would repeat colours
    for r in runs:
        pts = train_losses(r["run"])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1,
                ls="--" if r["rope_shared_keys"] == "false" else "-", label=r["run"])
    if base:  # where the base's own training loss ended: what uptraining has to recover
        ax.axhline(train_losses("base")[-1][1], color="grey", lw=0.8, ls=":", label="MHA base, last training loss")
    ax.set_xlabel("uptraining step")
    ax.set_ylabel("training loss")
    ax.grid(True, lw=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Uptraining from the MHA base")
    fig.tight_layout()
    fig.savefig(args.curves, dpi=120)
    print("wrote", args.curves)
class BadInput(Exception):
    """Input the user must fix; main() prints it and exits 2 (the project's bad-input code)."""


def read_loss_series(arg):
    """(name, {step: loss}, {step: val_loss}) of one run. A step seen twice keeps its later value: a
    resumed run re-did it (the trainer also trims metrics.jsonl on resume)."""
    path = os.path.join(arg, "metrics.jsonl") if os.path.isdir(arg) else arg
    # a run is named by its log directory; a CSV (or a renamed jsonl) by its file name
    named_by = os.path.dirname(os.path.abspath(path)) if os.path.basename(path) == "metrics.jsonl" else path
    name = os.path.splitext(os.path.basename(os.path.normpath(named_by)))[0]
    loss, val = {}, {}
    try:
        with open(path, newline="") as f:
            if path.endswith(".csv"):
                rows = list(csv.DictReader(f))
                if rows and "step" not in rows[0]:
                    raise BadInput(f"{path}: no 'step' column (columns: {', '.join(rows[0])})")
                records = [(i + 2, r) for i, r in enumerate(rows)]  # line 1 is the header
            else:
                records = []
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        records.append((line_no, json.loads(line)))
                    except json.JSONDecodeError:
                        # a run killed mid-write can leave one torn line; keep the rest of the curve
                        print(f"plot.py: {path}:{line_no}: skipping a line that is not JSON", file=sys.stderr)
    except OSError as e:
        raise BadInput(f"{path}: cannot read ({e.strerror}); give a run's log directory, its metrics.jsonl or a CSV")
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not a text file (metrics.jsonl or CSV expected)")
    for line_no, r in records:
        if not isinstance(r, dict) or "step" not in r:
            print(f"plot.py: {path}:{line_no}: skipping a record without 'step'", file=sys.stderr)
            continue
        try:
            step = int(r["step"])
            for key, into in (("loss", loss), ("val_loss", val)):
                if r.get(key) not in (None, ""):  # null: a non-finite loss the trainer logged
                    into[step] = float(r[key])
        except (TypeError, ValueError):
            raise BadInput(f"{path}:{line_no}: step/loss/val_loss is not a number: {r}")
    if not loss and not val:
        raise BadInput(f"{path}: no loss or val_loss values (is it a run's log directory?)")
    return name, loss, val


def plot_loss(args):
    try:
        w, h = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        raise BadInput(f"--size {args.size}: want WxH in pixels, e.g. 1000x600")
    if not (200 <= w <= 8000 and 150 <= h <= 8000):
        raise BadInput(f"--size {args.size}: want WxH between 200x150 and 8000x8000")
    series, offset = [], 0
    for run in args.runs:
        name, loss, val = read_loss_series(run)
        if args.chain:  # each run continues on the step axis where the previous one ended
            loss = {s + offset: v for s, v in loss.items()}
            val = {s + offset: v for s, v in val.items()}
            offset = max([offset, *loss, *val])
        series.append((name, loss, val))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dpi = 100
    fig, ax = plt.subplots(figsize=(w / dpi, h / dpi), dpi=dpi)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, loss, val) in enumerate(series):
        c = colours[i % len(colours)]
        if loss:
            ax.plot(sorted(loss), [loss[s] for s in sorted(loss)], color=c, lw=1.5, label=f"{name} loss",
                    marker="o" if len(loss) == 1 else None)  # a lone point draws no line
        if val:
            ax.plot(sorted(val), [val[s] for s in sorted(val)], color=c, ls="--", marker="s", ms=4,
                    label=f"{name} val loss")
        last = lambda m: f"{m[max(m)]:.4f}" if m else "nan"
        print(f"{name}: {len(loss)} loss points (last {last(loss)}), {len(val)} val points (last {last(val)})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(args.title)
    ax.grid(True, lw=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(args.png, dpi=dpi)
    except OSError as e:
        print(f"plot.py: {args.png}: cannot write ({e.strerror})", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {args.png} ({w}x{h})")


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
    lo = sub.add_parser("loss", help="training and validation loss of one or several runs")
    lo.add_argument("png")
    lo.add_argument("runs", nargs="+", metavar="RUN", help="log directory, metrics.jsonl or CSV")
    lo.add_argument("--chain", action="store_true",
                    help="draw each run after the previous one on the step axis (pretraining, then uptraining)")
    lo.add_argument("--title", default="loss (solid) and val loss (dashed)")
    lo.add_argument("--size", default="1000x600", help="WxH in pixels")
    lo.set_defaults(func=plot_loss)
    args = p.parse_args()
    try:
        args.func(args)
    except BadInput as e:
        print(f"plot.py: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
