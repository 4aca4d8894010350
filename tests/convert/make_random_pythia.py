#!/usr/bin/env python3
"""Writes a random-weight Pythia-shaped (GPT-NeoX) model with transformers: the judged scenario's input.

  make_random_pythia.py OUT --layers 5 --d 96 --heads 6 [--vocab 50304] [--dtype bfloat16] [--shard-mb 5]

Weights are N(0, 0.05) (not the default init, so every tensor matters), saved sharded with
save_pretrained. Used by tests/convert/transformers_test.cpp.
"""
import argparse

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--layers", type=int, required=True)
ap.add_argument("--d", type=int, required=True)
ap.add_argument("--heads", type=int, required=True)
ap.add_argument("--vocab", type=int, default=50304)
ap.add_argument("--dtype", default="bfloat16")
ap.add_argument("--shard-mb", type=int, default=5)
a = ap.parse_args()
cfg = GPTNeoXConfig(vocab_size=a.vocab, hidden_size=a.d, num_hidden_layers=a.layers, num_attention_heads=a.heads,
                    intermediate_size=4 * a.d, rotary_pct=0.25, max_position_embeddings=256,
                    use_parallel_residual=True, tie_word_embeddings=False)
torch.manual_seed(1)
m = GPTNeoXForCausalLM(cfg)
with torch.no_grad():
    for p in m.parameters():
        p.normal_(0, 0.05)
m.to(getattr(torch, a.dtype)).save_pretrained(a.out, max_shard_size=f"{a.shard_mb}MB")
