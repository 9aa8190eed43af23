"""Execution through a `transformers` model's own forward: the path for any architecture.

The cache is the model's own `DynamicCache`, with one difference: a sliding-window layer keeps
every position like a full-attention layer (transformers' sliding layers drop what left the
window, and then cannot be cropped back or packed). The window is applied by the attention
mask instead: transformers' own mask for a plain causal forward, ours (built from the
positions) for a tree. So rollback is a crop and `keep_positions` a gather on every layer.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer, get_layer_types_and_kwargs

from ..decoding.cache import KVCache, kept_prefix
from ..errors import TokenleapError, first_line
from .layered import LayerStack, check_split

# Layer types whose attention a position mask expresses: key j visible to query i when the mask
# allows it, and for sliding layers also when pos_i - pos_j < window (transformers' convention).
MASKED_TYPES = ("full_attention", "sliding_attention")


def attention_layout(hf_model: torch.nn.Module) -> dict[str, int | None]:
    """{attention layer type: its window (None: unwindowed)} as the model's own cache sees its
    layers. A TokenleapError naming the model type when a layer is not plain KV attention
    (a recurrent or linear-attention state, KV sharing, chunked or indexed attention): such a
    cache cannot be rolled back or packed, so no method here can verify drafts on it, and the
    model is refused before any method runs."""
    config = hf_model.config
    kind = repr(config.model_type)
    if getattr(hf_model, "_is_stateful", False):  # transformers' flag for recurrent models
        raise TokenleapError(
            f"model type {kind} keeps a recurrent state, which cannot be rolled back to verify drafts: "
            "no tokenleap method runs on it (all of them, ar included, run on an attention KV cache)")
    layer_types, per_layer = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    odd = sorted({t for t in layer_types if t not in MASKED_TYPES})
    if odd:
        raise TokenleapError(
            f"model type {kind} has {', '.join(odd)} layers, which the HF runner cannot roll back or mask for "
            "draft verification: no tokenleap method runs on it")
    return {t: kw.get("sliding_window") for t, kw in zip(layer_types, per_layer)}


class HFCache:
    """`DynamicCache` behind the KVCache protocol: every layer keeps every position (a sliding
    layer too; see the module docstring), rollback = crop, keep_positions = gather."""

    def __init__(self, config) -> None:
        self.inner = DynamicCache(config=config)
        for i, layer in enumerate(self.inner.layers):
            if type(layer) is DynamicSlidingWindowLayer:
                self.inner.layers[i] = DynamicLayer()
            elif type(layer) is not DynamicLayer:
                raise TokenleapError(f"the HF runner cannot roll back a {type(layer).__name__} cache layer")

    @property
    def length(self) -> int:
        return self.inner.get_seq_length()

    @length.setter
    def length(self, value: int) -> None:
        if value != self.length:
            self.rollback(value)

    @property
    def batch(self) -> int:
        for layer in self.inner.layers:
            keys = getattr(layer, "keys", None)
            if keys is not None and keys.numel():
                return keys.shape[0]
        return 1

    def _filled(self):
        return [layer for layer in self.inner.layers if layer.is_initialized and layer.keys.numel()]

    def rollback(self, length: int) -> None:
        drop = self.length - length
        if drop < 0:
            raise ValueError(f"cannot roll back to {length} from {self.length}")
        if drop:
            self.inner.crop(-drop)

    def select_rows(self, rows: torch.Tensor, start: int = 0) -> None:
        for layer in self._filled():  # every position: a superset of what `start` asks
            layer.keys = layer.keys[rows]
            layer.values = layer.values[rows]

    def keep_positions(self, start: int, kept: torch.Tensor) -> None:
        if kept_prefix(kept):
            self.rollback(start + kept.numel())
            return
        for layer in self._filled():
            src = start + kept.to(device=layer.keys.device, dtype=torch.long)
            layer.keys = torch.cat([layer.keys[:, :, :start], layer.keys[:, :, src]], dim=2)
            layer.values = torch.cat([layer.values[:, :, :start], layer.values[:, :, src]], dim=2)


    def copy_prefix(self, src: KVCache, length: int, dtype: torch.dtype) -> bool:
        if not (isinstance(src, HFCache) and src.length >= length and self.length == 0
                and len(src.inner.layers) == len(self.inner.layers)
                and all(type(a) is type(b) and b.is_initialized for a, b in zip(self.inner.layers, src.inner.layers))):
            return False
        for mine, theirs in zip(self.inner.layers, src.inner.layers):
            mine.keys = theirs.keys[:1, :, :length].to(dtype, copy=True)
            mine.values = theirs.values[:1, :, :length].to(dtype, copy=True)
            mine.device, mine.is_initialized = theirs.device, True
        return True


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool [n, m] (True: may attend) -> the [1, 1, n, m] additive mask HF models accept."""
    return torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, torch.finfo(dtype).min)[None, None]


class HFRunner:
    def __init__(self, hf_model: torch.nn.Module) -> None:
        self.hf_model = hf_model
        self.windows = attention_layout(hf_model)
        self.num_layers = hf_model.config.get_text_config(decoder=True).num_hidden_layers
        self.vocab_size = hf_model.get_output_embeddings().out_features  # a QuantLinear's too (quant=)
        self.dtype = hf_model.dtype
        self.device = hf_model.device
        self._stack: LayerStack | None = None  # per-layer access, made on first use (ppd)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + output embeddings (and final soft-capping) on hidden states [B, n, d]
        that came out of the last layer: the model's own modules, through its decoder
        (`layered.LayerStack`)."""
        stack = self.layer_stack()
        return stack.logits(stack.final_norm(hidden))

    def layer_stack(self) -> LayerStack:
        """Per-layer access through the model's own decoder (`models.layered`), made and checked
        against the plain forward once; a model it cannot be made for is a TokenleapError naming
        its type."""
        if self._stack is None:
            try:
                stack = LayerStack(self.hf_model)
                check_split(stack, self.new_cache, self.masks)
            except TokenleapError:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
                # E.g. ALiBi Falcon derives its position biases from a 2D padding mask: it cannot
                # take the explicit masks and positions a partial forward needs.
                raise TokenleapError(f"cannot run model type {self.hf_model.config.model_type!r} layer by layer "
                                     f"through transformers ({type(exc).__name__}: {first_line(exc)})") from exc
            self._stack = stack
        return self._stack

    def new_cache(self, batch: int = 1, capacity: int = 256) -> HFCache:
        return HFCache(self.hf_model.config)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf_model.get_input_embeddings()(ids)

    def masks(self, start: int, positions: torch.Tensor, attn_mask: torch.Tensor | None):
        """The 4D additive mask(s) for new rows at `positions` after `start` cached ones (cached
        position j sits at j: caches are packed): `attn_mask` (default causal) among the new rows,
        every cached row visible (or `attn_mask` [n, start + n] over both), each sliding layer's
        window on top, by position. One tensor when every layer has the same type, else
        {layer type: mask} as transformers' models take it."""
        n = positions.numel()
        among = torch.ones(n, n, dtype=torch.bool).tril() if attn_mask is None else attn_mask.cpu().bool()
        # A mask [n, start + n] says which cached rows each new row sees too (the lookahead trainer's).
        visible = among if among.shape[1] == start + n else torch.cat([torch.ones(n, start, dtype=torch.bool), among],
                                                                      1)
        q_pos = positions.cpu().long()
        k_pos = torch.cat([torch.arange(start), q_pos])
        masks = {}
        for layer_type, window in self.windows.items():
            allowed = visible
            if layer_type == "sliding_attention" and window is not None:
                allowed = visible & (q_pos[:, None] - k_pos[None, :] < window)
            masks[layer_type] = additive_mask(allowed, self.dtype).to(self.device)
        return next(iter(masks.values())) if len(masks) == 1 else masks

    @torch.no_grad()
    def forward(self, cache: HFCache, ids: torch.Tensor | None = None, *,
                embeds: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        start = cache.length
        rows = ids if embeds is None else embeds
        batch, n = rows.shape[:2]
        default = torch.arange(start, start + n, device=self.device)
        custom = attn_mask is not None or (positions is not None and not torch.equal(positions.to(self.device), default))
        positions = default if positions is None else positions.to(self.device)
        # A plain causal forward: the model builds its own masks (sliding ones included). A tree
        # or custom positions: ours, per layer type.
        mask = self.masks(start, positions, attn_mask) if custom else None
        try:
            out = self.hf_model(input_ids=ids, inputs_embeds=embeds, cache=cache.inner, use_cache=True,
                                position_ids=positions[None].expand(batch, -1), attention_mask=mask,
                                logits_to_keep=1 if last_only else 0)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            if not custom:
                raise
            # E.g. ALiBi Falcon derives its position biases from a 2D padding mask, so it cannot
            # take a tree's 4D mask and positions.
            raise TokenleapError(
                f"model type {self.hf_model.config.model_type!r} cannot run a forward with a custom attention mask "
                f"and positions through transformers ({type(exc).__name__}: {first_line(exc)}), which verifying a tree of "
                "drafts needs (mtad-tree, pass with scheme one-call); chain methods (ar, sps, mtad, pass with "
                "scheme two-call or merged) run on it") from exc
        return out.logits
