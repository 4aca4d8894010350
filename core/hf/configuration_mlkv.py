# Configuration of MLKV GPT-NeoX (Pythia) models as `mlkv-convert export` writes them.
#
# Written for mlkv-train and shipped next to the weights in the transformers custom-model
# convention: config.json's "auto_map" points here, and
#   AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
# loads the model. The KV plan is spelled out rather than derived: `kv_owners` lists the layers that
# own K/V projections (ascending, starting at 0); every other layer attends to the K/V of the nearest
# owner below it. `num_key_value_heads` is the number of KV heads of every owner; query head q reads
# KV head q // (num_attention_heads // num_key_value_heads). `rope_shared_keys = False` reproduces the
# seed MLKV paper's code, whose non-owner layers read the owner's keys before rotary.
from transformers import PretrainedConfig


class MlkvNeoXConfig(PretrainedConfig):
    model_type = "mlkv_neox"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=50304,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        num_key_value_heads=None,
        kv_owners=None,
        rope_shared_keys=True,
        rotary_pct=0.25,
        rotary_emb_base=10000.0,
        max_position_embeddings=2048,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        initializer_range=0.02,
        use_cache=True,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.kv_owners = list(range(num_hidden_layers)) if kv_owners is None else [int(o) for o in kv_owners]
        self.rope_shared_keys = bool(rope_shared_keys)
        self.rotary_pct = rotary_pct
        self.rotary_emb_base = rotary_emb_base
        self.max_position_embeddings = max_position_embeddings
        self.layer_norm_eps = layer_norm_eps
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        owners = self.kv_owners
        if not owners or owners[0] != 0 or any(b <= a for a, b in zip(owners, owners[1:])) or owners[-1] >= num_hidden_layers:
            raise ValueError(f"kv_owners {owners} must start at 0, increase strictly and name layers < {num_hidden_layers}")
        if num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_key_value_heads {self.num_key_value_heads} must divide num_attention_heads {num_attention_heads}"
            )
        if tie_word_embeddings:
            raise ValueError("MLKV GPT-NeoX keeps embed_in and embed_out untied")
        super().__init__(
            bos_token_id=bos_token_id, eos_token_id=eos_token_id, tie_word_embeddings=False, **kwargs
        )
