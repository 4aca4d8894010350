# MLKV GPT-NeoX (Pythia) for transformers, written for mlkv-train's `mlkv-convert export`.
#
# The architecture is Pythia's (parallel residual, LayerNorm, exact GELU MLP, partial rotary in the
# rotate_half layout, untied embeddings) with MLKV key/value sharing: only the layers in
# config.kv_owners project K and V; every layer of an owner's group attends to those (rotated) K/V.
# The KV cache therefore holds one entry per owner — config.kv_owners has len(kv_owners) slots — which
# is the point of MLKV. Tensor names follow GPT-NeoX, with separate query/key/value linears:
#   gpt_neox.layers.N.attention.{query, key, value, dense}.{weight, bias}   (key/value: owners only)
#
# rope_shared_keys = False is the seed paper's variant: an owner attends with its own rotated keys,
# the rest of its group with the owner's keys before rotary. The cache then stores both, concatenated
# along the head dimension, so cached decoding matches the full forward exactly.
#
# Works with transformers 4.56 … 5.x. Releases up to 5.23 pass the KV cache to forward() as
# `past_key_values` and read it back from the output's `past_key_values`; 5.24 renamed both to `cache`.
# forward() accepts either name and the outputs use the field this release defines: a model that
# ignored `cache=` would build a fresh cache at every generate() step and decode with no context.
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_mlkv import MlkvNeoXConfig

# scaled_dot_product_attention's enable_gqa (query heads sharing a KV head, no copies): torch >= 2.5.
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def _output(cls, cache, **fields):
    # The output's cache field is `cache` from transformers 5.24 on, `past_key_values` before.
    name = "cache" if "cache" in cls.__dataclass_fields__ else "past_key_values"
    return cls(**fields, **{name: cache})


def _cache_of(output):
    return output.cache if "cache" in output.__dataclass_fields__ else output.past_key_values


def _the_cache(cache, past_key_values):
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the KV cache once, as cache= or as past_key_values=")
    return cache if cache is not None else past_key_values


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rotary(x, cos, sin, rot):
    # x [B, heads, T, hd]; the first `rot` dims rotate, the rest pass through.
    xr, xp = x[..., :rot], x[..., rot:]
    return torch.cat((xr * cos + _rotate_half(xr) * sin, xp), dim=-1)


class MlkvRotary(nn.Module):
    # No buffer on purpose: transformers 5 builds models on the meta device and never fills
    # non-persistent buffers, so inv_freq is recomputed (rot/2 numbers) on every call.
    def __init__(self, config):
        super().__init__()
        hd = config.hidden_size // config.num_attention_heads
        self.rot = int(hd * config.rotary_pct)
        self.base = float(config.rotary_emb_base)

    def forward(self, position_ids, dtype):
        # position_ids [B, T] → cos, sin [B, 1, T, rot], computed in fp32 like GPT-NeoX.
        exponent = torch.arange(0, self.rot, 2, dtype=torch.float64, device=position_ids.device) / self.rot
        inv_freq = (1.0 / self.base**exponent).float()
        freqs = position_ids[..., None].float() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[:, None].to(dtype), emb.sin()[:, None].to(dtype)


class MlkvAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.hd = config.hidden_size // self.heads
        self.rot = int(self.hd * config.rotary_pct)
        self.rope_shared_keys = config.rope_shared_keys
        owners = config.kv_owners
        self.is_owner = layer_idx in owners
        self.slot = max(i for i, o in enumerate(owners) if o <= layer_idx)  # cache slot of this layer's owner
        d = config.hidden_size
        self.query = nn.Linear(d, self.heads * self.hd)
        if self.is_owner:
            self.key = nn.Linear(d, self.kv_heads * self.hd)
            self.value = nn.Linear(d, self.kv_heads * self.hd)
        self.dense = nn.Linear(self.heads * self.hd, d)

    def forward(self, x, shared, cos, sin, mask, cache):
        B, T, _ = x.shape
        q = self.query(x).view(B, T, self.heads, self.hd).transpose(1, 2)
        q = _apply_rotary(q, cos, sin, self.rot)
        if self.is_owner:
            k = self.key(x).view(B, T, self.kv_heads, self.hd).transpose(1, 2)
            v = self.value(x).view(B, T, self.kv_heads, self.hd).transpose(1, 2)
            k_rot = _apply_rotary(k, cos, sin, self.rot)
            # What the group reads: rotated keys, or (paper variant) rotated | un-rotated side by side.
            k_store = k_rot if self.rope_shared_keys else torch.cat((k_rot, k), dim=-1)
            if cache is not None:
                k_store, v = cache.update(k_store, v, self.slot)
            shared = (k_store, v)
        k_all, v_all = shared
        if self.rope_shared_keys:
            k_use = k_all
        else:
            k_use = k_all[..., : self.hd] if self.is_owner else k_all[..., self.hd :]
        # Query head h reads KV head h // (heads / kv_heads). SDPA keeps the [B, H, T, S] scores out of
        # memory where a fused kernel applies (eager fp32 scores took ~0.5 GiB per 2048-token prompt at
        # 160M, which capped generate's batch), and enable_gqa reads the shared K/V without copies.
        rep = self.heads // self.kv_heads
        if rep > 1 and not _SDPA_HAS_GQA:
            k_use = k_use.repeat_interleave(rep, dim=1)
            v_all = v_all.repeat_interleave(rep, dim=1)
        gqa = {"enable_gqa": True} if rep > 1 and _SDPA_HAS_GQA else {}
        # mask None: no padding, and either no cache before these T queries or a single query, so
        # SDPA's own causal rule (top-left aligned) is the right one and its flash kernels apply.
        out = F.scaled_dot_product_attention(q, k_use, v_all, attn_mask=mask, is_causal=mask is None and T > 1,
                                             scale=self.hd**-0.5, **gqa)
        out = out.transpose(1, 2).reshape(B, T, self.heads * self.hd)
        return self.dense(out), shared


class MlkvMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x)))  # exact (erf) GELU


class MlkvNeoXLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = MlkvAttention(config, layer_idx)
        self.mlp = MlkvMLP(config)

    def forward(self, x, shared, cos, sin, mask, cache):
        attn, shared = self.attention(self.input_layernorm(x), shared, cos, sin, mask, cache)
        return x + attn + self.mlp(self.post_attention_layernorm(x)), shared  # parallel residual


class MlkvNeoXPreTrainedModel(PreTrainedModel):
    config_class = MlkvNeoXConfig
    base_model_prefix = "gpt_neox"
    supports_gradient_checkpointing = False
    _no_split_modules = ["MlkvNeoXLayer"]
    _supports_cache_class = True
    _keys_to_ignore_on_load_unexpected = [r"attention\.bias", r"attention\.masked_bias", r"rotary_emb\.inv_freq"]

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()


class MlkvNeoXModel(MlkvNeoXPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_in = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MlkvNeoXLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.rotary = MlkvRotary(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_in

    def set_input_embeddings(self, value):
        self.embed_in = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        cache=None,
        **kwargs,
    ):
        past_key_values = _the_cache(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_in(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        S = past + T  # keys visible to this call: cached + new

        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError("MlkvNeoX takes a 2D [batch, keys] padding mask")
        if position_ids is None:
            if attention_mask is not None:  # left padding: positions count real tokens only
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past, S, device=x.device)[None].expand(B, T)
        # Without padding, and with either no cache before these T queries or a single query, the
        # attention applies the causal rule itself (mask None, see MlkvAttention.forward). Otherwise an
        # additive mask [B, 1, T, S] in the activations' dtype (what SDPA takes): causal over cache
        # indices, padding keys hidden. Finite, so a query with no visible key (left padding) gets a
        # uniform row rather than NaNs that would reach every row through 0 · NaN in P·V.
        mask = None
        if not ((past == 0 or T == 1) and (attention_mask is None or bool(attention_mask[:, -S:].all()))):
            q_idx = torch.arange(past, S, device=x.device)[:, None]
            k_idx = torch.arange(S, device=x.device)[None, :]
            allowed = (k_idx <= q_idx)[None, None]
            if attention_mask is not None:
                allowed = allowed & attention_mask[:, None, None, -S:].bool()
            mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(~allowed, torch.finfo(x.dtype).min)

        cos, sin = self.rotary(position_ids, x.dtype)
        shared = None
        for layer in self.layers:
            x, shared = layer(x, shared, cos, sin, mask, past_key_values)
        x = self.final_layer_norm(x)
        return _output(BaseModelOutputWithPast, past_key_values if use_cache else None, last_hidden_state=x)


class MlkvNeoXForCausalLM(MlkvNeoXPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.gpt_neox = MlkvNeoXModel(config)
        self.embed_out = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.embed_out

    def set_output_embeddings(self, new_embeddings):
        self.embed_out = new_embeddings

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        return_dict=None,
        cache=None,
        **kwargs,
    ):
        out = self.gpt_neox(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=_the_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        logits = self.embed_out(h)
        loss = None
        if labels is not None:  # next-token loss: position t predicts labels[t + 1]
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return _output(CausalLMOutputWithPast, _cache_of(out), loss=loss, logits=logits)
