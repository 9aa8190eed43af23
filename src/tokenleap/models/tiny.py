"""Tiny random Llama models with word-level tokenizers, for tests and quick experiments.

Small vocabularies make exact laws enumerable (V^n sequences), so lossless sampling can be
checked against the truth rather than against another implementation."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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
