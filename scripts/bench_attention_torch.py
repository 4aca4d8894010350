#!/usr/bin/env python3
"""Times torch.nn.functional.scaled_dot_product_attention (causal, bf16) forward and backward on
attention shapes B,H,KVH,T,hd, with the cuDNN and FlashAttention-2 backends, and prints one table
next to our kernel's numbers (a CSV from mlkv-bench-attention --csv, read with --ours-csv) and,
when that CSV has them, our own cuDNN SDPA backend's (train.attention = "cudnn").

Query heads share KV heads through enable_gqa=True; where a backend refuses that, K/V are
repeated to H heads before timing (the repeat is not timed; the row is marked 'x').
Times are medians over --iters runs after warm-up, with CUDA events; backward = (forward +
backward) - forward, as in the peer table of shared/gpu-host/README.md.
"""
import argparse
import csv
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

DEFAULT_SHAPES = ("16,12,12,2048,64;16,12,1,2048,64;8,8,8,2048,256;4,32,32,2048,80;2,16,16,8192,128;"
                  "16,12,2,2048,64;16,12,4,2048,64;8,8,1,2048,256;8,8,2,2048,256;4,32,4,2048,80;2,16,1,8192,128")


def median_ms(fn, iters):
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def time_backend(backend, B, H, KVH, T, hd, iters):
    """(fwd_ms, bwd_ms, expanded) or None if the backend cannot run the shape."""
    dev = torch.device("cuda")
    q = torch.randn(B, H, T, hd, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, KVH, T, hd, device=dev, dtype=torch.bfloat16)
    v = torch.randn(B, KVH, T, hd, device=dev, dtype=torch.bfloat16)
    dout = torch.randn(B, H, T, hd, device=dev, dtype=torch.bfloat16)
    for expanded in ([False, True] if KVH != H else [False]):
        if expanded:
            kk = k.repeat_interleave(H // KVH, dim=1).detach().requires_grad_(True)
            vv = v.repeat_interleave(H // KVH, dim=1).detach().requires_grad_(True)
            gqa = False
        else:
            kk = k.detach().requires_grad_(True)
            vv = v.detach().requires_grad_(True)
            gqa = KVH != H
        try:
            with sdpa_kernel([backend]):
                def fwd():
                    return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa)

                def fwd_bwd():
                    out = fwd()
                    out.backward(dout)

                fwd_bwd()
                torch.cuda.synchronize()
                f = median_ms(fwd, iters)
                fb = median_ms(fwd_bwd, iters)
                return f, fb - f, expanded
        except RuntimeError:
            torch.cuda.synchronize()
            continue
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=DEFAULT_SHAPES)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--ours-csv", default="")
    args = ap.parse_args()
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";") if s]
    ours, ours_cudnn = {}, {}
    if args.ours_csv:
        with open(args.ours_csv) as f:
            for row in csv.DictReader(f):
                key = tuple(int(row[c]) for c in ("B", "H", "KVH", "T", "hd"))
                ours[key] = (float(row["fwd_ms"]), float(row["bwd_ms"]))
                if row.get("cudnn_fwd_ms"):
                    ours_cudnn[key] = (float(row["cudnn_fwd_ms"]), float(row["cudnn_bwd_ms"]))
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}; "
          f"causal bf16; median of {args.iters}; ms (fwd / bwd / total); x = K/V repeated to H heads")
    hdr = (f"{'B,H,KVH,T,hd':<20} {'ours':>22} {'our cuDNN backend':>22} {'torch cuDNN':>24} {'torch FA2':>24} "
           f"{'ours/cuDNN':>10} {'ours/FA2':>8}")
    print(hdr)
    print("-" * len(hdr))
    for (B, H, KVH, T, hd) in shapes:
        cells = []
        o = ours.get((B, H, KVH, T, hd))
        for r in (o, ours_cudnn.get((B, H, KVH, T, hd))):
            cells.append(f"{r[0]:6.3f} {r[1]:6.3f} {r[0] + r[1]:7.3f}" if r else f"{'-':>22}")
        totals = []
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
            r = time_backend(backend, B, H, KVH, T, hd, args.iters)
            if r is None:
                cells.append(f"{'n/a':>24}")
                totals.append(None)
            else:
                f, b, x = r
                cells.append(f"{f:6.3f} {b:6.3f} {f + b:7.3f}{'x' if x else ' '}  ")
                totals.append(f + b)
            torch.cuda.empty_cache()
        ratios = [f"{(o[0] + o[1]) / t:.2f}" if (o and t) else "-" for t in totals]
        print(f"{f'{B},{H},{KVH},{T},{hd}':<20} {cells[0]:>22} {cells[1]:>22} {cells[2]:>24} {cells[3]:>24} "
              f"{ratios[0]:>10} {ratios[1]:>8}", flush=True)


if __name__ == "__main__":
    main()
