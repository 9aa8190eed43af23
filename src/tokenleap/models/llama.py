"""Lean execution of Llama-family models on their Hugging Face weights.

The forward is ours (a handful of tensor ops per layer), the weights are the HF module's
parameters, shared rather than copied where the layout allows. What we gain over the HF
forward: a pre-allocated cache where rollback is a cursor move, no mask or cache objects
built per step, fused QKV and gate/up projections, and per-layer access (early exit for
PPD, embeddings in for PaSS, tree masks for MTAD-tree).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..decoding.cache import StaticKVCache

SUPPORTED_TYPES = {"llama", "mistral", "qwen2"}


def supports(hf_model: torch.nn.Module) -> bool:
    """True when the lean runner reproduces this model's forward exactly."""
    cfg = hf_model.config
    if cfg.model_type not in SUPPORTED_TYPES or getattr(cfg, "hidden_act", "silu") != "silu":
        return False
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return False
    inner = getattr(hf_model, "model", None)
    return inner is not None and hasattr(inner, "layers") and hasattr(inner, "rotary_emb")


@dataclass
class _Layer:
    attn_norm: torch.Tensor
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor | None
    o_w: torch.Tensor
    mlp_norm: torch.Tensor
    gate_up_w: torch.Tensor
    down_w: torch.Tensor


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaRunner:
    def __init__(self, hf_model: torch.nn.Module, head_subset: list[int] | None = None) -> None:
        cfg = hf_model.config
        inner = hf_model.model
        self.hf_model = hf_model
        self.num_layers = cfg.num_hidden_layers
        self.num_heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.embed_w = inner.embed_tokens.weight
        self.final_norm = inner.norm.weight
        self.head_w = hf_model.lm_head.weight
        self.vocab_size = self.head_w.shape[0]
        # A reduced head (drafts): logits only for these ids, -inf elsewhere, so the model
        # never proposes a token outside them and costs a fraction of a full head.
        self.head_ids = None
        if head_subset is not None:
            self.head_ids = torch.tensor(head_subset, dtype=torch.long, device=self.head_w.device)
            self.head_w = self.head_w[self.head_ids]
        self.dtype = self.head_w.dtype
        self.device = self.head_w.device
        self.layers = [self._fuse(layer) for layer in inner.layers]
        # cos/sin for every position up to the context, from the model's own rotary module
        # (so scaled RoPE variants come out right); extended on demand.
        self._rotary = inner.rotary_emb
        self._cos, self._sin = self._rope_table(max(2048, int(getattr(cfg, "max_position_embeddings", 2048))))

    @torch.no_grad()
    def _fuse(self, layer: torch.nn.Module) -> _Layer:
        a, m = layer.self_attn, layer.mlp
        biases = [p.bias for p in (a.q_proj, a.k_proj, a.v_proj)]
        return _Layer(
            attn_norm=layer.input_layernorm.weight,
            qkv_w=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
            qkv_b=torch.cat(biases) if biases[0] is not None else None,
            o_w=a.o_proj.weight,
            mlp_norm=layer.post_attention_layernorm.weight,
            gate_up_w=torch.cat([m.gate_proj.weight, m.up_proj.weight]),
            down_w=m.down_proj.weight,
        )

    @torch.no_grad()
    def _rope_table(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        probe = torch.zeros(1, dtype=torch.float32, device=self.device)
        cos, sin = self._rotary(probe, torch.arange(n, device=self.device)[None])
        return cos[0].to(self.dtype), sin[0].to(self.dtype)

    # -- pieces, exposed for methods that need per-layer access -------------------------
    def new_cache(self, batch: int = 1, capacity: int = 256) -> StaticKVCache:
        return StaticKVCache(self.num_layers, batch, self.kv_heads, self.head_dim, capacity,
                             self.dtype, self.device)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embed_w)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # Same arithmetic as HF's LlamaRMSNorm: normalise in fp32, scale in the model dtype.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * xf.to(x.dtype)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head: hidden states [B, n, d] -> logits [B, n, V]."""
        logits = F.linear(self.rms_norm(hidden, self.final_norm), self.head_w)
        if self.head_ids is None:
            return logits
        full = logits.new_full(logits.shape[:-1] + (self.vocab_size,), float("-inf"))
        return full.index_copy_(-1, self.head_ids, logits)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if int(positions.max()) >= self._cos.shape[0]:
            self._cos, self._sin = self._rope_table(2 * int(positions.max()) + 1)
        return self._cos[positions], self._sin[positions]

    def attention_mask(self, start: int, n: int, attn_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Bool [n, start + n]: cached positions all visible, new ones causal (or as given)."""
        if attn_mask is None:
            if n == 1:
                return None
            attn_mask = torch.ones(n, n, dtype=torch.bool, device=self.device).tril_()
        prefix = torch.ones(n, start, dtype=torch.bool, device=self.device)
        return torch.cat([prefix, attn_mask.to(self.device)], dim=1)

    def run_layer(self, i: int, x: torch.Tensor, cache: StaticKVCache, start: int,
                  cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Layer i over new positions x [B, n, d] placed at cache slots start..start+n."""
        L = self.layers[i]
        B, n, _ = x.shape
        H, KV, D = self.num_heads, self.kv_heads, self.head_dim
        h = self.rms_norm(x, L.attn_norm)
        qkv = F.linear(h, L.qkv_w, L.qkv_b)
        q, k, v = qkv.split([H * D, KV * D, KV * D], dim=-1)
        q = q.view(B, n, H, D).transpose(1, 2)
        k = k.view(B, n, KV, D).transpose(1, 2)
        v = v.view(B, n, KV, D).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        end = start + n
        cache.keys[i][:, :, start:end] = k
        cache.values[i][:, :, start:end] = v
        attn = F.scaled_dot_product_attention(
            q, cache.keys[i][:, :, :end], cache.values[i][:, :, :end],
            attn_mask=mask, enable_gqa=H != KV)
        x = x + F.linear(attn.transpose(1, 2).reshape(B, n, H * D), L.o_w)
        gate, up = F.linear(self.rms_norm(x, L.mlp_norm), L.gate_up_w).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, L.down_w)

    # -- the whole forward ---------------------------------------------------------------
    @torch.no_grad()
    def hidden_states(self, cache: StaticKVCache, x: torch.Tensor, positions: torch.Tensor | None = None,
                      attn_mask: torch.Tensor | None = None, layers: range | None = None) -> torch.Tensor:
        """Run `layers` (default all) over new embeddings x; the cursor advances afterwards."""
        start, n = cache.length, x.shape[1]
        cache.reserve(start + n)
        if positions is None:
            positions = torch.arange(start, start + n, device=self.device)
        cos, sin = self.rope(positions)
        mask = self.attention_mask(start, n, attn_mask)
        for i in layers if layers is not None else range(self.num_layers):
            x = self.run_layer(i, x, cache, start, cos, sin, mask)
        return x

    @torch.no_grad()
    def forward(self, cache: StaticKVCache, ids: torch.Tensor | None = None, *,
                embeds: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        x = self.embed(ids) if embeds is None else embeds.to(self.dtype)
        x = self.hidden_states(cache, x, positions, attn_mask)
        cache.length += x.shape[1]
        return self.head(x[:, -1:] if last_only else x)
