"""Execution through a `transformers` model's own forward: the path for any architecture."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from ..decoding.cache import kept_prefix


class HFCache:
    """`DynamicCache` behind the KVCache protocol (rollback = crop)."""

    def __init__(self, config) -> None:
        self.inner = DynamicCache(config=config)

    @property
    def length(self) -> int:
        return self.inner.get_seq_length()

    @length.setter
    def length(self, value: int) -> None:
        if value != self.length:
            self.rollback(value)

    @property
    def batch(self) -> int:
        layer = self.inner.layers[0]
        keys = getattr(layer, "keys", None)
        return 1 if keys is None or keys.numel() == 0 else keys.shape[0]

    def rollback(self, length: int) -> None:
        drop = self.length - length
        if drop < 0:
            raise ValueError(f"cannot roll back to {length} from {self.length}")
        if drop:
            self.inner.crop(-drop)

    def select_rows(self, rows: torch.Tensor, start: int = 0) -> None:
        for layer in self.inner.layers:  # every position: a superset of what `start` asks
            layer.keys = layer.keys[rows]
            layer.values = layer.values[rows]

    def keep_positions(self, start: int, kept: torch.Tensor) -> None:
        if kept_prefix(kept):
            self.rollback(start + kept.numel())
            return
        src = start + kept.to(torch.long)
        for layer in self.inner.layers:
            layer.keys = torch.cat([layer.keys[:, :, :start], layer.keys[:, :, src]], dim=2)
            layer.values = torch.cat([layer.values[:, :, :start], layer.values[:, :, src]], dim=2)


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool [n, m] (True: may attend) -> the [1, 1, n, m] additive mask HF models accept."""
    return torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, torch.finfo(dtype).min)[None, None]


class HFRunner:
    def __init__(self, hf_model: torch.nn.Module) -> None:
        self.hf_model = hf_model
        self.num_layers = hf_model.config.num_hidden_layers
        self.vocab_size = hf_model.get_output_embeddings().weight.shape[0]
        self.dtype = hf_model.dtype
        self.device = hf_model.device

    def new_cache(self, batch: int = 1, capacity: int = 256) -> HFCache:
        return HFCache(self.hf_model.config)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf_model.get_input_embeddings()(ids)

    @torch.no_grad()
    def forward(self, cache: HFCache, ids: torch.Tensor | None = None, *,
                embeds: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        start = cache.length
        n = (ids if embeds is None else embeds).shape[1]
        if attn_mask is not None:
            # Cached positions all visible, new ones as given: HF takes that as a 4D additive mask.
            visible = torch.cat([torch.ones(n, start, dtype=torch.bool), attn_mask.cpu()], dim=1)
            attn_mask = additive_mask(visible, self.hf_model.dtype).to(self.device)
        if positions is None:
            positions = torch.arange(start, start + n, device=self.device)
        positions = positions.to(self.device)
        out = self.hf_model(
            input_ids=ids, inputs_embeds=embeds, cache=cache.inner, use_cache=True,
            position_ids=positions[None], cache_position=torch.arange(start, start + n, device=self.device),
            attention_mask=attn_mask,
            logits_to_keep=1 if last_only else 0)
        return out.logits
