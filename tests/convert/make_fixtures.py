#!/usr/bin/env python3
"""Writes the converter's committed fixtures under tests/convert/fixtures/ from tests/fixtures/.

paper_mlkv/          tests/fixtures/mlkv_compat's model in the seed MLKV paper's checkpoint layout
                     (github.com/zaydzuhri/pythia-mlkv, gpt_neox_mlkv/): separate query/key/value/dense
                     linears, key/value only in KV layers, config fields num_key_value_layers /
                     num_key_value_heads, and the buffers its modules register (attention.bias,
                     attention.masked_bias, attention.rotary_emb.inv_freq). Checked here against an
                     independent float64 forward with the paper's semantics (non-owner layers read the
                     owner's keys before rotary), which must reproduce mlkv_compat's logits.
export_mlkv_uneven/  what `mlkv-convert export` must write for tests/fixtures/mlkv_uneven: config.json
                     and model.safetensors with split query/key/value in HF names. When transformers is
                     installed, the directory plus core/hf/*.py is loaded with trust_remote_code and must
                     reproduce mlkv_uneven's logits, with and without the KV cache.

Run with the fixture venv (tests/fixtures/README.md): python3 tests/convert/make_fixtures.py
Deterministic: re-running rewrites byte-identical files.
"""
import json
import math
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(HERE, "fixtures")


def case(name):
    with open(os.path.join(FIX, name, "case.json")) as f:
        c = json.load(f)
    return c, load_file(os.path.join(FIX, name, "weights.safetensors")), load_file(os.path.join(FIX, name, "io.safetensors"))


def owners_of(c):
    own = c["owners"]
    return [max(o for o in own if o <= l) for l in range(c["layers"])]


def split_qkv(c, w, l):
    """Our fused rows [q heads | k heads | v heads] → (q, k, v) weight and bias pairs."""
    H, hd, kvh = c["heads"], c["d_model"] // c["heads"], c["kv_heads"]
    W, b = w[f"layers.{l}.attn.qkv.weight"], w[f"layers.{l}.attn.qkv.bias"]
    q = (W[: H * hd], b[: H * hd])
    if l not in c["owners"]:
        return q, None, None
    k = (W[H * hd : (H + kvh) * hd], b[H * hd : (H + kvh) * hd])
    v = (W[(H + kvh) * hd :], b[(H + kvh) * hd :])
    return q, k, v


def hf_common(c, w):
    t = {"gpt_neox.embed_in.weight": w["embed_in.weight"], "embed_out.weight": w["embed_out.weight"],
         "gpt_neox.final_layer_norm.weight": w["final_ln.weight"], "gpt_neox.final_layer_norm.bias": w["final_ln.bias"]}
    for l in range(c["layers"]):
        p = f"gpt_neox.layers.{l}."
        for ours, theirs in [("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm"), ("attn.dense", "attention.dense"),
                             ("mlp.up", "mlp.dense_h_to_4h"), ("mlp.down", "mlp.dense_4h_to_h")]:
            for s in ("weight", "bias"):
                t[p + theirs + "." + s] = w[f"layers.{l}.{ours}.{s}"]
        q, k, v = split_qkv(c, w, l)
        for part, wb in (("query", q), ("key", k), ("value", v)):
            if wb is not None:
                t[p + f"attention.{part}.weight"], t[p + f"attention.{part}.bias"] = wb
    return {k: v.contiguous() for k, v in t.items()}


# ---- the paper's layout -------------------------------------------------------------------------

def paper_forward(c, t, tokens):
    """float64 forward of a paper-layout model: the seed code's semantics, written independently."""
    L, H, d = c["layers"], c["heads"], c["d_model"]
    hd, kvh = d // H, c["num_key_value_heads"]
    rot = int(hd * c["rotary_pct"])
    kv_layers = [0] + [int((i + 1) * (L / c["num_key_value_layers"])) for i in range(c["num_key_value_layers"] - 1)]
    g = {k: v.double() for k, v in t.items()}
    B, T = tokens.shape
    inv = 1.0 / (c["rotary_emb_base"] ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
    cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()

    def rope(x):
        xr, xp = x[..., :rot], x[..., rot:]
        x1, x2 = xr[..., : rot // 2], xr[..., rot // 2 :]
        return torch.cat((xr * cos + torch.cat((-x2, x1), -1) * sin, xp), -1)

    def ln(x, p):
        return torch.nn.functional.layer_norm(x, (d,), g[p + ".weight"], g[p + ".bias"], c["layer_norm_eps"])

    def lin(x, p):
        return x @ g[p + ".weight"].T + g[p + ".bias"]

    x = g["gpt_neox.embed_in.weight"][tokens]
    passed = None
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for l in range(L):
        p = f"gpt_neox.layers.{l}."
        h = ln(x, p + "input_layernorm")
        q = lin(h, p + "attention.query").view(B, T, H, hd).transpose(1, 2)
        if l in kv_layers:
            k = lin(h, p + "attention.key").view(B, T, kvh, hd).transpose(1, 2)
            v = lin(h, p + "attention.value").view(B, T, kvh, hd).transpose(1, 2)
            passed = (k, v)  # shared before rotary: the paper's behaviour
            k = rope(k)
        else:
            k, v = passed
        q = rope(q)
        k, v = k.repeat_interleave(H // kvh, 1), v.repeat_interleave(H // kvh, 1)
        a = ((q @ k.transpose(-1, -2)) / math.sqrt(hd) + mask).softmax(-1) @ v
        a = lin(a.transpose(1, 2).reshape(B, T, d), p + "attention.dense")
        m = lin(torch.nn.functional.gelu(lin(ln(x, p + "post_attention_layernorm"), p + "mlp.dense_h_to_4h")), p + "mlp.dense_4h_to_h")
        x = x + a + m
    return ln(x, "gpt_neox.final_layer_norm") @ g["embed_out.weight"].T


def make_paper():
    c, w, io = case("mlkv_compat")
    L, H = c["layers"], c["heads"]
    n_kv = len(c["owners"])
    assert [0] + [int((i + 1) * (L / n_kv)) for i in range(n_kv - 1)] == c["owners"], "plan must follow the paper's rule"
    maxpos = 64
    config = {
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "vocab_size": c["vocab"],
        "hidden_size": c["d_model"], "num_hidden_layers": L, "num_attention_heads": H,
        "num_key_value_heads": c["kv_heads"], "num_key_value_layers": n_kv, "use_key_value_mlp": False,
        "intermediate_size": 4 * c["d_model"], "kv_intermediate_size": 4 * c["d_model"], "hidden_act": "gelu",
        "rotary_pct": c["rotary_pct"], "rotary_emb_base": c["rotary_base"], "max_position_embeddings": maxpos,
        "initializer_range": 0.02, "layer_norm_eps": c["ln_eps"], "use_cache": True, "bos_token_id": 0,
        "eos_token_id": 0, "tie_word_embeddings": False, "use_parallel_residual": True, "torch_dtype": "float32",
    }
    t = hf_common(c, w)
    hd = c["d_model"] // H
    rot = int(hd * c["rotary_pct"])
    for l in range(L):  # the buffers the paper's modules register (and save)
        p = f"gpt_neox.layers.{l}.attention."
        t[p + "bias"] = torch.tril(torch.ones(maxpos, maxpos, dtype=torch.uint8)).view(1, 1, maxpos, maxpos)
        t[p + "masked_bias"] = torch.tensor(-1e9)
        t[p + "rotary_emb.inv_freq"] = 1.0 / (c["rotary_base"] ** (torch.arange(0, rot, 2).float() / rot))
    cfg = dict(config, layers=L, heads=H, d_model=c["d_model"])
    T = c["seq_len"]
    logits = paper_forward(cfg, t, io["tokens"][:, :T].long())
    err = (logits - io["logits"].double()).abs().max().item()
    assert err < 1e-5, f"paper-semantics forward differs from mlkv_compat by {err}"
    d = os.path.join(OUT, "paper_mlkv")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    save_file(dict(sorted(t.items())), os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    print(f"paper_mlkv: paper-semantics float64 forward matches mlkv_compat logits to {err:.2e}")


# ---- the expected export ------------------------------------------------------------------------

def expected_export_config(c):
    # What mlkv-convert export writes (core/convert_hf.cpp, hf_config_json) for a non-MHA plan.
    return {
        "architectures": ["MlkvNeoXForCausalLM"], "model_type": "mlkv_neox",
        "auto_map": {"AutoConfig": "configuration_mlkv.MlkvNeoXConfig",
                     "AutoModelForCausalLM": "modeling_mlkv.MlkvNeoXForCausalLM"},
        "num_key_value_heads": c["kv_heads"], "kv_owners": c["owners"], "rope_shared_keys": c["rope_shared_keys"],
        "vocab_size": c["vocab"], "hidden_size": c["d_model"], "num_hidden_layers": c["layers"],
        "num_attention_heads": c["heads"], "intermediate_size": 4 * c["d_model"], "hidden_act": "gelu",
        "max_position_embeddings": 64, "layer_norm_eps": c["ln_eps"], "rotary_pct": c["rotary_pct"],
        "rotary_emb_base": c["rotary_base"], "use_parallel_residual": True, "tie_word_embeddings": False,
        "attention_bias": True, "attention_dropout": 0.0, "hidden_dropout": 0.0, "initializer_range": 0.02,
        "bos_token_id": 0, "eos_token_id": 0, "use_cache": True, "dtype": "float32", "torch_dtype": "float32",
    }


def check_with_transformers(d, c, io):
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        print("export_mlkv_uneven: transformers not installed, load check skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        for f in os.listdir(d):
            shutil.copy(os.path.join(d, f), tmp)
        for f in ("configuration_mlkv.py", "modeling_mlkv.py"):
            shutil.copy(os.path.join(ROOT, "core", "hf", f), tmp)
        m = AutoModelForCausalLM.from_pretrained(tmp, trust_remote_code=True, dtype=torch.float64).eval()
        T = c["seq_len"]
        tokens = io["tokens"][:, :T].long()
        with torch.no_grad():
            full = m(tokens).logits
            err = (full - io["logits"].double()).abs().max().item()
            assert err < 1e-5, f"transformers load differs from mlkv_uneven by {err}"
            out = m(tokens[:, :4], use_cache=True)
            steps, cache = [out.logits], out.past_key_values
            for t in range(4, T):
                out = m(tokens[:, t : t + 1], past_key_values=cache, use_cache=True)
                steps.append(out.logits)
                cache = out.past_key_values
            cerr = (torch.cat(steps, 1) - full).abs().max().item()
            assert cerr < 1e-9, f"cached decoding differs by {cerr}"
    print(f"export_mlkv_uneven: transformers logits match to {err:.2e}; cached decoding to {cerr:.2e}")


def make_export():
    c, w, io = case("mlkv_uneven")
    d = os.path.join(OUT, "export_mlkv_uneven")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(expected_export_config(c), f, indent=2)
        f.write("\n")
    save_file(dict(sorted(hf_common(c, w).items())), os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    check_with_transformers(d, c, io)


if __name__ == "__main__":
    torch.manual_seed(0)
    make_paper()
    make_export()
    sys.exit(0)
