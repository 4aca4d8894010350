#!/usr/bin/env python3
"""Loads a directory written by `mlkv-convert export` in transformers and checks it against our CPU model.

  check_hf_export.py --dir DIR --ours OURS.safetensors --expect-class NAME

OURS holds `tokens` (int32 [B, T]) and `logits` (float32 [B, T, V]) from our CPU forward. Checks:
  1. AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True) builds class NAME and loads
     every weight (no missing or unexpected keys);
  2. its logits match ours: max|ours - theirs| / max|ours| <= --max-rel (1e-4);
  3. the KV cache is right: a prefix forward plus one-token steps with the cache reproduces the full
     forward, under each name this release's forward takes it by (`cache`, `past_key_values`);
  4. generate() is right: the logits it used at every step (output_logits=True) equal a full forward
     over the tokens it produced, and greedy tokens are the same with and without the cache (equal
     tokens alone prove little: a weak model predicts much the same with no context at all);
  5. for MLKV models, the cache holds one entry per KV layer (len(kv_owners)), and a left-padded batch
     generates what each prompt generates alone.
Prints one line per check; exits 1 on the first failure. Used by tests/convert/transformers_test.cpp.
"""
import argparse
import inspect
import sys

import torch
from safetensors.torch import load_file
import transformers
from transformers import AutoModelForCausalLM


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def cache_names(model):
    # The keyword(s) this model's forward takes the cache by: our modeling file takes both; the stock
    # GPT-NeoX takes `cache` from transformers 5.24 on (`past_key_values` is a deprecated alias) and
    # only `past_key_values` before.
    params = inspect.signature(type(model).forward).parameters
    return [n for n in ("cache", "past_key_values") if n in params]


def cache_of(out):
    return out.cache if "cache" in out.__dataclass_fields__ else out.past_key_values


def filled_entries(cache):
    if hasattr(cache, "layers"):  # transformers >= 4.56: one CacheLayer per slot
        return sum(1 for layer in cache.layers if getattr(layer, "keys", None) is not None and layer.keys.numel() > 0)
    return sum(1 for k in cache.key_cache if k is not None and k.numel() > 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--ours", required=True)
    ap.add_argument("--expect-class", required=True)
    ap.add_argument("--max-rel", type=float, default=1e-4)
    a = ap.parse_args()

    # transformers 4.56 renamed torch_dtype= to dtype=; older releases keep an unknown dtype= in the config
    old = tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (4, 56)
    model, info = AutoModelForCausalLM.from_pretrained(
        a.dir, trust_remote_code=True, output_loading_info=True, **{"torch_dtype" if old else "dtype": torch.float32}
    )
    model.eval()
    name = type(model).__name__
    if name != a.expect_class:
        fail(f"loaded {name}, expected {a.expect_class}")
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(k):
            fail(f"{k}: {sorted(info[k])}")
    print(f"ok: loaded {name} with every weight")

    ours = load_file(a.ours)
    tokens, want = ours["tokens"].long(), ours["logits"]
    with torch.no_grad():
        full = model(tokens).logits
        r = rel(full, want)
        if not r <= a.max_rel:
            fail(f"logits max relative error {r:.3e} > {a.max_rel}")
        print(f"ok: logits match ours, max relative error {r:.3e}")

        T = tokens.shape[1]
        half = T // 2
        for name in cache_names(model):
            out = model(tokens[:, :half], use_cache=True)
            cache, steps = cache_of(out), [out.logits]
            for t in range(half, T):
                out = model(tokens[:, t : t + 1], use_cache=True, **{name: cache})
                cache = cache_of(out)
                steps.append(out.logits)
            r = rel(torch.cat(steps, 1), full)
            if not r <= 1e-5:
                fail(f"cached decoding (cache passed as {name}=) differs from the full forward by {r:.3e}")
            print(f"ok: prefix + cached one-token steps (cache passed as {name}=) reproduce the full forward ({r:.3e})")

        owners = getattr(model.config, "kv_owners", None)
        if owners is not None:
            if filled_entries(cache) != len(owners):
                fail(f"cache holds {filled_entries(cache)} K/V entries, the plan has {len(owners)} KV layers")
            print(f"ok: the cache holds {len(owners)} K/V entries (one per KV layer of {model.config.num_hidden_layers})")

        # min_new_tokens keeps EOS (id 0) from ending one run early; both runs see the same rule.
        new = 8
        prompt = tokens[:, :half]
        greedy = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        g = model.generate(prompt, use_cache=True, output_logits=True, return_dict_in_generate=True, **greedy)
        if len(g.logits) != new:
            fail(f"generate returned {len(g.logits)} step logits for {new} new tokens")
        used = torch.stack(g.logits, 1)  # [B, new, V]: step i chose token half + i
        again = model(g.sequences).logits[:, half - 1 : half - 1 + new]
        r = rel(used, again)
        if not r <= 1e-5:
            fail(f"the logits generate() used differ from a full forward over its tokens by {r:.3e}")
        print(f"ok: generate's step logits equal a full forward over its {new} new tokens ({r:.3e})")
        if owners is not None and filled_entries(cache_of(g)) != len(owners):
            fail(f"generate's cache holds {filled_entries(cache_of(g))} K/V entries, the plan has {len(owners)}")
        g_none = model.generate(prompt, use_cache=False, **greedy)
        if not torch.equal(g.sequences, g_none):
            fail(f"generate with cache {g.sequences.tolist()} != without {g_none.tolist()}")
        print(f"ok: greedy generate agrees with and without the cache: {g.sequences[0, half:].tolist()} "
              f"(transformers {transformers.__version__})")

        if owners is not None and tokens.shape[0] > 1:
            short, long_ = tokens[1:2, : half - 2], tokens[0:1, :half]
            batch = torch.zeros(2, half, dtype=torch.long)
            mask = torch.zeros(2, half, dtype=torch.long)
            batch[0], mask[0] = long_[0], 1
            batch[1, 2:], mask[1, 2:] = short[0], 1  # left padding
            g = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0, min_new_tokens=6)
            alone = [
                model.generate(long_, max_new_tokens=6, do_sample=False, pad_token_id=0, min_new_tokens=6)[0, half:],
                model.generate(short, max_new_tokens=6, do_sample=False, pad_token_id=0, min_new_tokens=6)[0, half - 2 :],
            ]
            for i in range(2):
                if not torch.equal(g[i, half:], alone[i]):
                    fail(f"left-padded row {i} generated {g[i, half:].tolist()}, alone {alone[i].tolist()}")
            print("ok: a left-padded batch generates what each prompt generates alone")


if __name__ == "__main__":
    main()
