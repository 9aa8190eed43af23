"""Tiny random models with word-level tokenizers, for tests and quick experiments.

`make_tiny_llama` builds the Llama the method tests use; `make_tiny` builds any decoder family
in FAMILIES (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3, GPT-2, OPT, GPT-NeoX, Falcon, and a
Mamba for the unsupported case) from its config. Small vocabularies make exact laws enumerable
(V^n sequences), so lossless sampling can be checked against the truth rather than against
another implementation."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<unk>", "<eos>"]


def tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: ids 0,1 are <unk>,<eos>; then words w2 .. w{V-1}."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")


def make_tiny_llama(path: str | Path, vocab_size: int = 32, hidden_size: int = 64, num_layers: int = 2,
                    num_heads: int = 4, num_kv_heads: int = 2, max_position_embeddings: int = 512,
                    seed: int = 0, init_std: float = 0.2, tie_word_embeddings: bool = False) -> Path:
    """Save a random Llama (fp32) plus tokenizer to `path`; return the path.

    init_std is large compared with real models so next-token distributions are peaked and
    greedy decisions are far from ties."""
    path = Path(path)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         num_key_value_heads=num_kv_heads, max_position_embeddings=max_position_embeddings,
                         initializer_range=init_std, bos_token_id=None, eos_token_id=1, pad_token_id=None,
                         tie_word_embeddings=tie_word_embeddings, rms_norm_eps=1e-5)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float()
    model.generation_config.pad_token_id = None
    model.save_pretrained(path)
    tiny_tokenizer(vocab_size).save_pretrained(path)
    return path


ALTERNATING = ("sliding_attention", "full_attention")  # a layer_types pattern, repeated over the layers

# family -> (the transformers model_type, what that family's tiny config sets beyond the shared
# sizes). Each family's defaults keep its character: biases where the family has them (Qwen2,
# GPT-2, OPT, Falcon here), absolute position embeddings (GPT-2, OPT), sliding-window layers
# mixed with full ones and logit soft-capping (Gemma 2), per-type RoPE (Gemma 3), partial
# rotary and parallel residuals (GPT-NeoX), fused projections (Phi-3), an embedding projection
# (OPT's word_embed_proj_dim). Any of it can be overridden through `make_tiny`'s settings.
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("llama", {}),
    "mistral": ("mistral", {"sliding_window": None}),  # settings may give it a window
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
    # Untied: Gemma scales its embeddings by sqrt(hidden), and a tied head on a random model then
    # mostly predicts the token it was fed, so greedy would repeat one token forever.
    "gemma2": ("gemma2", {"sliding_window": 8, "tie_word_embeddings": False, "layer_types": ALTERNATING,
                          "final_logit_softcapping": 8.0, "attn_logit_softcapping": 4.0,
                          "query_pre_attn_scalar": 16}),
    "gemma3": ("gemma3_text", {"sliding_window": 8, "tie_word_embeddings": False, "layer_types": ALTERNATING,
                               "query_pre_attn_scalar": 16}),
    "phi3": ("phi3", {}),
    "gpt2": ("gpt2", {"n_inner": 128}),
    "opt": ("opt", {"ffn_dim": 128, "word_embed_proj_dim": 32}),
    "gpt_neox": ("gpt_neox", {}),
    "falcon": ("falcon", {"bias": True, "ffn_hidden_size": 128}),
    "mamba": ("mamba", {"state_size": 4}),  # a recurrent state: no KV cache to roll back
}


def make_tiny(path: str | Path, family: str, *, vocab_size: int = 32, hidden_size: int = 64, num_layers: int = 2,
              num_heads: int = 4, num_kv_heads: int = 2, max_position_embeddings: int = 512, seed: int = 0,
              init_std: float = 0.2, **settings) -> Path:
    """Save a random model of `family` (a key of FAMILIES; fp32) plus the word-level tokenizer to
    `path`; return the path. `settings` are further config fields (e.g. sliding_window=8,
    alibi=True) and override the family's defaults.

    The config is the family's own (`AutoConfig.for_model`) with shared tiny sizes; every weight
    matrix, embedding and bias is drawn from N(0, init_std) (norms keep their defaults), large
    next to real models so that next-token distributions are peaked and greedy is far from ties,
    and biases are nonzero so a model that drops one differs."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    model_type, defaults = FAMILIES[family]
    path = Path(path)
    fields = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=num_heads, intermediate_size=2 * hidden_size,
                  max_position_embeddings=max_position_embeddings, initializer_range=init_std,
                  bos_token_id=None, eos_token_id=1, pad_token_id=None)
    head_dim = hidden_size // num_heads
    config = AutoConfig.for_model(model_type, **fields)
    # Only the fields this family's config knows (GPT-2 has no kv heads) or needs set (Gemma's
    # head_dim is 256 whatever the width, Qwen3's 128).
    if hasattr(config, "num_key_value_heads"):
        fields["num_key_value_heads"] = num_kv_heads
    if getattr(config, "head_dim", None) not in (None, head_dim):
        fields["head_dim"] = head_dim
    fields.update(defaults)
    fields.update(settings)
    if isinstance(fields.get("layer_types"), tuple):
        pattern = fields["layer_types"]
        fields["layer_types"] = [pattern[i % len(pattern)] for i in range(num_layers)]
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).float()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                module.weight.normal_(0.0, init_std)
                if getattr(module, "bias", None) is not None:
                    module.bias.normal_(0.0, init_std)
    model.generation_config.pad_token_id = None
    model.generation_config.bos_token_id = None
    model.generation_config.eos_token_id = 1
    model.save_pretrained(path)
    tiny_tokenizer(vocab_size).save_pretrained(path)
    return path
