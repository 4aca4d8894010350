#!/usr/bin/env python3
"""The peer of `mlkv-bench decode` (issue 13): the same model, context and memory budget in torch.

  scripts/bench_decode_hf.py --model DIR --csv decode.csv [--budget-gib 16] [--device cuda|cpu]

DIR is the HF directory that `mlkv-bench decode CONFIG --export-hf DIR` writes (its mlkv_bench.json
gives the config, plan and context that label our rows, so the peer's rows match them), or any
`mlkv-convert export`. Two implementations, each at batches 1, 2, 4, ... until out of memory or
--max-batch, rows appended to the CSV that mlkv-bench decode writes (same columns, empty where n/a):

  hf_generate   transformers `generate` (greedy, use_cache, min_new_tokens = max_new_tokens so no EOS
                stops it) on DIR: plain GPTNeoXForCausalLM for MHA, the exported MLKV modeling file
                through trust_remote_code otherwise. A prompt of P = context - steps tokens, then
                `steps` new tokens; decode time = time(steps new tokens) - time(1 new token), which
                removes the prefill, over steps - 1 decode steps. peak_gib: the allocator's high-water
                mark (the prefill included: it is what limits HF's batch). kv_bytes_per_token: what
                the returned cache really holds.
  torch_sdpa    what an ideal torch implementation of the MLKV decode does at the same shapes: per
                layer LayerNorm, the Q (and, in owner layers, K/V) GEMMs, rotary, the cache write,
                F.scaled_dot_product_attention of one query per sequence against the owner's cache
                of kv heads (enable_gqa, no copies), the output and MLP GEMMs; then the final
                LayerNorm, LM head and argmax, ids back to the host. Every step attends to the full
                context (the last position), timed with CUDA events after warm-up; attn_us / attn_gb_s
                time one layer's SDPA alone, with the bytes counted as mlkv-bench counts them.
                torch_sdpa_graph: the same step captured once as a CUDA graph (no launch overhead).
                Its largest batch is found exactly (bisection), as ours is.

On CUDA the budget is enforced with torch.cuda.set_per_process_memory_fraction: an allocation past
it fails as out-of-memory, and the sweep stops there. --device cpu runs the same code (tiny shapes;
no budget, no peak) so CI can check the rows. --random-weights initialises DIR's config.json instead
of loading model.safetensors (speed does not depend on the weights).
"""
import argparse
import csv
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

# The columns of decode.csv; mlkv-bench decode (launch/mlkv_bench.cpp) writes the same header, and
# tests/decode checks that the two agree.
COLUMNS = ("impl,config,plan,kv_bytes_per_token,budget_gib,context,batch,largest_batch,weights_gib,cache_gib,"
           "workspace_gib,peak_gib,ms_per_step,tokens_per_s,attn_us,attn_gb_s,device").split(",")
GIB = float(1 << 30)


class Bench:
    """The device, the budget and the clock that both implementations share."""

    def __init__(self, args):
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        if self.cuda and self.dev.index is None:  # set_per_process_memory_fraction wants an index
            self.dev = torch.device("cuda", torch.cuda.current_device())
        self.budget = args.budget_gib * GIB
        if self.cuda:
            total = torch.cuda.get_device_properties(self.dev).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, self.budget / total), self.dev)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.dev)

    def seconds(self, fn, repeat=1):
        """Median wall time of fn() over `repeat` runs (CUDA events on the GPU)."""
        times = []
        for _ in range(repeat):
            self.sync()
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def reset_peak(self):
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.dev)

    def peak_gib(self):
        return torch.cuda.max_memory_allocated(self.dev) / GIB if self.cuda else ""

    def describe(self):
        name = torch.cuda.get_device_name(self.dev) if self.cuda else "cpu"
        return f"{name}; torch {torch.__version__}"


def is_oom(e):
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def batches_until(fits_and_row, max_batch):
    """Rows at batches 1, 2, 4, ... while fits_and_row(B) returns a row (None: out of memory)."""
    rows, b = [], 1
    while b <= max_batch:
        row = fits_and_row(b)
        if row is None:
            break
        rows.append(row)
        b *= 2
    return rows


# ---- hf_generate --------------------------------------------------------------------------------

def load_hf(args, bench):
    from transformers import AutoConfig, AutoModelForCausalLM
    if args.random_weights:
        cfg = AutoConfig.from_pretrained(args.model, trust_remote_code=True)
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True, dtype=torch.bfloat16)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True, dtype=torch.bfloat16)
    return model.to(bench.dev).eval()


def cache_tensors(cache):
    """Every K/V tensor a transformers cache holds (DynamicCache of 4.56 ... 5.x)."""
    if hasattr(cache, "layers"):
        # transformers 5 sizes the cache for every layer; MLKV fills only its owners' slots
        kv = [t for layer in cache.layers for t in (getattr(layer, "keys", None), getattr(layer, "values", None))]
        return [t for t in kv if t is not None and t.numel() > 0]
    if hasattr(cache, "key_cache"):
        return list(cache.key_cache) + list(cache.value_cache)
    return [t for kv in cache for t in kv]


def bench_hf(args, bench, labels):
    import transformers
    model = load_hf(args, bench)
    vocab, ctx, steps = model.config.vocab_size, labels["context"], args.steps
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    device = (f"{bench.describe()}; transformers {transformers.__version__} {type(model).__name__} "
              f"attn={model.config._attn_implementation}")
    gen = torch.Generator().manual_seed(0)

    def generate(ids, n):
        with torch.no_grad():
            return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, use_cache=True, pad_token_id=0,
                                  return_dict_in_generate=True)

    def row(B):
        ids = torch.randint(0, vocab, (B, ctx - steps), generator=gen).to(bench.dev)
        try:
            generate(ids, 1)  # warm-up at these shapes (cuBLAS and attention kernels pick per shape)
            bench.reset_peak()
            t1 = bench.seconds(lambda: generate(ids, 1), args.repeat)
            out = [None]
            tn = bench.seconds(lambda: out.__setitem__(0, generate(ids, steps)), args.repeat)
            peak = bench.peak_gib()
            res = out[0]
            cache = getattr(res, "past_key_values", None) or getattr(res, "cache", None)
            kv = cache_tensors(cache)
            cached = kv[0].shape[-2]  # positions in the cache: the prompt and every token fed back
            cache_bytes = sum(t.numel() * t.element_size() for t in kv)
            del out, res, cache, kv
        except (RuntimeError, torch.OutOfMemoryError) as e:
            if not is_oom(e):
                raise
            print(f"  hf_generate: batch {B} out of memory", flush=True)
            return None
        step_s = max(tn - t1, 1e-9) / (steps - 1)
        print(f"  hf_generate {B:6d} {1e3 * step_s:10.3f} ms/step {B / step_s:10.0f} tok/s  peak {peak or 0:.2f} GiB",
              flush=True)
        return dict(impl="hf_generate", batch=B, kv_bytes_per_token=cache_bytes // (B * cached),
                    weights_gib=weights / GIB, cache_gib=cache_bytes / GIB, peak_gib=peak, ms_per_step=1e3 * step_s,
                    tokens_per_s=B / step_s, device=device)

    rows = batches_until(row, args.max_batch)
    del model
    bench.reset_peak()
    return rows


# ---- torch_sdpa ---------------------------------------------------------------------------------

class SdpaDecoder:
    """One decode step of the export's shapes in plain torch, at the last position of the context."""

    def __init__(self, hf_config, B, ctx, dev):
        c = hf_config
        self.L, self.d, self.H = c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"]
        self.KVH = c.get("num_key_value_heads", self.H)
        self.owners = c.get("kv_owners", list(range(self.L)))
        self.hd = self.d // self.H
        self.rot = int(self.hd * c.get("rotary_pct", c.get("rope_parameters", {}).get("partial_rotary_factor", 1)))
        self.eps, self.B, self.ctx = c.get("layer_norm_eps", 1e-5), B, ctx
        ffn, vocab, d, kv = c["intermediate_size"], c["vocab_size"], self.d, self.KVH * self.hd
        bf = dict(device=dev, dtype=torch.bfloat16)
        # drawn in place: no temporary the size of the cache (speed does not depend on the values)
        w = lambda *s: torch.empty(*s, **bf).normal_(0, 0.02)  # noqa: E731
        self.emb, self.lm_head = w(vocab, d), w(d, vocab)
        self.layers = []
        for l in range(self.L):
            own = l in self.owners
            self.layers.append(dict(
                ln1=(torch.ones(d, **bf), torch.zeros(d, **bf)), ln2=(torch.ones(d, **bf), torch.zeros(d, **bf)),
                qkv=w(d, d + 2 * kv if own else d), qkv_b=w(d + 2 * kv if own else d), out=w(d, d), out_b=w(d),
                fc1=w(d, ffn), fc1_b=w(ffn), fc2=w(ffn, d), fc2_b=w(d)))
        # the cache: owner layers only, [B, kv heads, context, head_dim], as in mlkv's Decoder
        self.k = {o: w(B, self.KVH, ctx, self.hd) for o in self.owners}
        self.v = {o: w(B, self.KVH, ctx, self.hd) for o in self.owners}
        self.final_ln = (torch.ones(d, **bf), torch.zeros(d, **bf))
        pos = ctx - 1
        inv = 1.0 / (c.get("rotary_emb_base", 10000.0) ** (torch.arange(0, self.rot, 2, device=dev) / self.rot))
        ang = torch.cat([pos * inv, pos * inv])
        self.cos, self.sin = ang.cos().to(torch.bfloat16), ang.sin().to(torch.bfloat16)
        self.ids = torch.zeros(B, dtype=torch.long, device=dev)
        self.cache_bytes = sum(t.numel() * t.element_size() for t in list(self.k.values()) + list(self.v.values()))
        self.weight_bytes = sum(t.numel() * t.element_size() for l in self.layers for t in l.values()
                                if torch.is_tensor(t)) + 2 * self.emb.numel() * 2

    def rope(self, x):  # x [B, heads, 1, hd]: rotate_half on the first `rot` dims
        r, h = x[..., : self.rot], self.rot // 2
        rotated = torch.cat((-r[..., h:], r[..., :h]), dim=-1)
        return torch.cat((r * self.cos + rotated * self.sin, x[..., self.rot:]), dim=-1)

    def attend(self, q, o):
        return F.scaled_dot_product_attention(q, self.k[o], self.v[o], enable_gqa=self.KVH != self.H)

    def step(self):
        B, H, KVH, hd, d = self.B, self.H, self.KVH, self.hd, self.d
        x = self.emb[self.ids]
        owner = 0
        for l, p in enumerate(self.layers):
            h = F.layer_norm(x, (d,), *p["ln1"], self.eps)
            qkv = torch.addmm(p["qkv_b"], h, p["qkv"])
            q = self.rope(qkv[:, :d].view(B, H, 1, hd))
            if l in self.owners:
                owner = l
                k = self.rope(qkv[:, d: d + KVH * hd].view(B, KVH, 1, hd))
                self.k[l][:, :, self.ctx - 1: self.ctx] = k
                self.v[l][:, :, self.ctx - 1: self.ctx] = qkv[:, d + KVH * hd:].view(B, KVH, 1, hd)
            a = self.attend(q, owner).reshape(B, d)
            m = torch.addmm(p["fc1_b"], F.layer_norm(x, (d,), *p["ln2"], self.eps), p["fc1"])
            x = x + torch.addmm(p["out_b"], a, p["out"]) + torch.addmm(p["fc2_b"], F.gelu(m), p["fc2"])
        logits = F.layer_norm(x, (d,), *self.final_ln, self.eps) @ self.lm_head
        self.ids.copy_(logits.argmax(-1))


def sdpa_backends(bench):
    """Flash/efficient/cuDNN SDPA kernels only (no math fallback that repeats K/V) where possible."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if not bench.cuda:
        return sdpa_kernel([SDPBackend.MATH]), "math"
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]), "fused"


def graph_timing(dec, B, steps, bench):
    """[("torch_sdpa_graph", seconds per step)] for the step captured as one CUDA graph; [] where the
    capture itself runs out of memory (its private pool comes on top of the eager step's)."""
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            dec.step()
        graph.replay()
        return [("torch_sdpa_graph", bench.seconds(lambda: [graph.replay() or dec.ids.cpu() for _ in range(steps)])
                 / steps)]
    except (RuntimeError, torch.OutOfMemoryError) as e:
        if not is_oom(e):
            raise
        print(f"  torch_sdpa_graph: batch {B}: the capture ran out of memory; no graph row", flush=True)
        return []


def bench_sdpa(args, bench, labels, hf_config):
    ctx = labels["context"]

    def run(B, time_it):
        """The rows at batch B, or None when B does not fit; time_it=False only checks that it fits."""
        dec = None
        try:
            bench.reset_peak()
            dec = SdpaDecoder(hf_config, B, ctx, bench.dev)
            kernels, kind = sdpa_backends(bench)
            with kernels, torch.no_grad():
                for _ in range(max(args.warmup, 1)):
                    dec.step()
                bench.sync()
                if not time_it:
                    return True
                out = []
                step_s = bench.seconds(lambda: [dec.step() or dec.ids.cpu() for _ in range(args.steps)]) / args.steps
                q = torch.randn(B, dec.H, 1, dec.hd, device=bench.dev, dtype=torch.bfloat16)
                attn_s = bench.seconds(lambda: dec.attend(q, 0), 5)
                timed = [("torch_sdpa", step_s)]
                if bench.cuda and not args.no_graph:
                    timed += graph_timing(dec, B, args.steps, bench)
                peak = bench.peak_gib()
        except (RuntimeError, torch.OutOfMemoryError) as e:
            if not is_oom(e):
                raise
            return None
        finally:
            del dec
        ab = 2
        attn_bytes = B * (2.0 * dec_shape["KVH"] * ctx * dec_shape["hd"] * ab + 2.0 * dec_shape["H"] * dec_shape["hd"] * ab)
        for impl, s in timed:
            print(f"  {impl:16s} {B:6d} {1e3 * s:10.3f} ms/step {B / s:10.0f} tok/s  attn {1e6 * attn_s:8.1f} us "
                  f"{attn_bytes / attn_s / 1e9:7.0f} GB/s  peak {peak or 0:.2f} GiB", flush=True)
            out.append(dict(impl=impl, batch=B, kv_bytes_per_token=dec_shape["kv_bytes_per_token"],
                            weights_gib=dec_shape["weights"] / GIB, cache_gib=B * dec_shape["cache_per_seq"] / GIB,
                            peak_gib=peak, ms_per_step=1e3 * s, tokens_per_s=B / s, attn_us=1e6 * attn_s,
                            attn_gb_s=attn_bytes / attn_s / 1e9, device=f"{bench.describe()}; sdpa {kind}"))
        return out

    probe = SdpaDecoder(hf_config, 1, ctx, bench.dev)  # the shapes, for the byte counts
    dec_shape = dict(H=probe.H, KVH=probe.KVH, hd=probe.hd, weights=probe.weight_bytes, cache_per_seq=probe.cache_bytes,
                     kv_bytes_per_token=probe.cache_bytes // ctx)
    del probe
    rows = batches_until(lambda B: run(B, True), args.max_batch)
    if rows:  # the largest batch that fits, between the last that ran and the first that did not
        ran = lo = rows[-1][0]["batch"]
        hi = min(2 * lo, args.max_batch + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if run(mid, False) else (lo, mid)
        if lo != ran:
            rows.append(run(lo, True) or [])
    return [r for rs in rows for r in rs]


# ---- CSV ----------------------------------------------------------------------------------------

def csv_header(path):
    """The header rows will be written under: path's own (mlkv-bench's), or COLUMNS for a new file.
    Checked before any timing, so a wrong --csv fails at once."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        sys.exit(f"bench_decode_hf.py: {path}: its header lacks the columns {missing} (not a decode.csv?)")
    return header


def append_rows(path, header, rows, labels, budget_gib):
    fresh = header is None
    header = header or COLUMNS
    by_impl = {}
    for r in rows:
        by_impl.setdefault(r["impl"], []).append(r["batch"])
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header, restval="", lineterminator="\n")
        if fresh:
            w.writeheader()
        for r in rows:
            w.writerow(dict(config=labels["config"], plan=labels["plan"], budget_gib=budget_gib,
                            context=labels["context"], largest_batch=max(by_impl[r["impl"]]), **r))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an HF export (mlkv-bench decode --export-hf DIR)")
    p.add_argument("--csv", required=True, help="decode.csv to append to")
    p.add_argument("--impl", default="hf_generate,torch_sdpa", help="comma-separated: hf_generate, torch_sdpa")
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-gib", type=float, default=16.0)
    p.add_argument("--context", type=int, default=0, help="default: mlkv_bench.json's, else 2048")
    p.add_argument("--steps", type=int, default=8, help="decode steps timed (hf: new tokens)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="hf_generate: timings per batch (median)")
    p.add_argument("--max-batch", type=int, default=1 << 20)
    p.add_argument("--config", default="", help="the CSV's config label (default: mlkv_bench.json's)")
    p.add_argument("--plan", default="", help="the CSV's plan label (default: mlkv_bench.json's)")
    p.add_argument("--random-weights", action="store_true", help="initialise config.json, skip model.safetensors")
    p.add_argument("--no-graph", action="store_true", help="torch_sdpa: skip the CUDA-graph variant")
    args = p.parse_args()
    cfg_path = os.path.join(args.model, "config.json")
    if not os.path.isfile(cfg_path):
        sys.exit(f"bench_decode_hf.py: {cfg_path}: missing (--model must be an HF export directory)")
    hf_config = json.load(open(cfg_path))
    side = os.path.join(args.model, "mlkv_bench.json")
    labels = json.load(open(side)) if os.path.isfile(side) else {}
    labels = dict(config=args.config or labels.get("config", args.model), plan=args.plan or labels.get("plan", ""),
                  context=args.context or labels.get("context", 2048))
    impls = [s for s in args.impl.split(",") if s]
    unknown = [s for s in impls if s not in ("hf_generate", "torch_sdpa")]
    if unknown or args.steps < 2 or labels["context"] <= args.steps or args.max_batch < 1:
        sys.exit(f"bench_decode_hf.py: bad arguments: unknown --impl {unknown}, or --steps < 2, "
                 f"or context {labels['context']} <= --steps, or --max-batch < 1")
    header = csv_header(args.csv)
    bench = Bench(args)
    print(f"bench_decode_hf.py {args.model}: {labels['plan']}, context {labels['context']}, "
          f"budget {args.budget_gib} GiB, {bench.describe()}", flush=True)
    appended = 0
    runs = (("hf_generate", lambda: bench_hf(args, bench, labels)),
            ("torch_sdpa", lambda: bench_sdpa(args, bench, labels, hf_config)))
    for impl, run in runs:
        if impl not in impls:
            continue
        rows = run()
        # each implementation's rows as soon as they exist: a run cut short keeps what it measured
        append_rows(args.csv, header, rows, labels, args.budget_gib)
        header = header or COLUMNS
        appended += len(rows)
        print(f"appended {len(rows)} {impl} rows to {args.csv}", flush=True)
    if not appended:
        sys.exit("bench_decode_hf.py: batch 1 did not fit in the budget for any implementation")


if __name__ == "__main__":
    main()
