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
from .kernels import linear, pack, quantize, rms_norm_linear, swiglu_linear

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


class LlamaRunner:
    def __init__(self, hf_model: torch.nn.Module, head_subset: list[int] | None = None,
                 layout: str = "dense", dtype: torch.dtype | None = None) -> None:
        """layout: how the matmul weights are stored (`kernels.LAYOUTS`; `load_model` picks the
        fastest measured one for the machine). dtype: activations, cache and norms (default: the
        weights' dtype); another one makes copies of the small tensors (a quantized self-draft of
        an fp32 target runs in bf16)."""
        cfg = hf_model.config
        self.layout, self.quant = layout, ("none", 0)
        inner = hf_model.model
        self.hf_model = hf_model
        self.num_layers = cfg.num_hidden_layers
        self.num_heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.dtype = dtype or hf_model.lm_head.weight.dtype
        # Attention (and so the K/V cache) in fp32 on the CPU whatever the activations: a
        # one-query bf16 SDPA costs ~5x an fp32 one here (70 vs 14 us for 120 keys, Zen 4), about
        # 2 ms of a 22 ms bf16 step. The K/V are the bf16 projections, widened exactly.
        self.attn_dtype = torch.float32 if self.device_of(hf_model).type == "cpu" else self.dtype
        self.embed_w = inner.embed_tokens.weight.to(self.dtype)
        self.final_norm = inner.norm.weight.to(self.dtype)
        self.head_w = hf_model.lm_head.weight
        self.vocab_size = self.head_w.shape[0]
        # A reduced head (drafts): logits only for these ids, -inf elsewhere, so the model
        # never proposes a token outside them and costs a fraction of a full head.
        self.head_ids = None
        if head_subset is not None:
            self.head_ids = torch.tensor(head_subset, dtype=torch.long, device=self.head_w.device)
            self.head_w = self.head_w[self.head_ids]
        self.device = self.head_w.device
        self.head_w = self._pack(self.head_w)
        self.layers = [self._fuse(layer) for layer in inner.layers]
        # cos/sin for every position up to the context, from the model's own rotary module
        # (so scaled RoPE variants come out right); extended on demand.
        self._rotary = inner.rotary_emb
        self._cos, self._sin = self._rope_table(max(2048, int(getattr(cfg, "max_position_embeddings", 2048))))

    @staticmethod
    def device_of(hf_model: torch.nn.Module) -> torch.device:
        return hf_model.lm_head.weight.device

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        if self.quant[0] != "none":
            return quantize(weight, *self.quant, act_dtype=self.dtype)
        return pack(weight.to(self.dtype), self.layout)

    def matrices(self) -> list[torch.Tensor]:
        """Every matmul weight of a decoding forward, in the order a forward uses them."""
        return [w for L in self.layers for w in (L.qkv_w, L.o_w, L.gate_up_w, L.down_w)] + [self.head_w]

    def use_layout(self, layout: str, quant: tuple[str, int] = ("none", 0)) -> None:
        """Re-store every matmul weight in `layout`, or quantized (`kernels.quantize`), from the
        dense weights it was built with."""
        if (layout, quant) == (self.layout, self.quant):
            return
        if self.layout != "dense" or self.quant[0] != "none":
            raise ValueError("use_layout converts from the dense layout only")
        self.layout, self.quant = (quant[0] if quant[0] != "none" else layout), quant
        self.head_w = self._pack(self.head_w)
        for L in self.layers:
            L.qkv_w, L.o_w = self._pack(L.qkv_w), self._pack(L.o_w)
            L.gate_up_w, L.down_w = self._pack(L.gate_up_w), self._pack(L.down_w)

    @torch.no_grad()
    def _fuse(self, layer: torch.nn.Module) -> _Layer:
        a, m = layer.self_attn, layer.mlp
        biases = [p.bias for p in (a.q_proj, a.k_proj, a.v_proj)]
        return _Layer(
            attn_norm=layer.input_layernorm.weight.to(self.dtype),
            qkv_w=self._pack(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])),
            qkv_b=torch.cat(biases).to(self.dtype) if biases[0] is not None else None,
            o_w=self._pack(a.o_proj.weight),
            mlp_norm=layer.post_attention_layernorm.weight.to(self.dtype),
            gate_up_w=self._pack(torch.cat([m.gate_proj.weight, m.up_proj.weight])),
            down_w=self._pack(m.down_proj.weight),
        )

    @torch.no_grad()
    def _rope_table(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        probe = torch.zeros(1, dtype=torch.float32, device=self.device)
        cos, sin = self._rotary(probe, torch.arange(n, device=self.device)[None])
        cos, sin = cos[0].to(self.dtype), sin[0].to(self.dtype)
        # HF rotates as x*cos + cat(-x2, x1)*sin. We use x*cos + roll(x)*sin_signed with
        # the first half of sin negated: the same products (negation is exact), two fewer
        # ops per layer.
        half = self.head_dim // 2
        return cos, torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)

    # -- pieces, exposed for methods that need per-layer access -------------------------
    def new_cache(self, batch: int = 1, capacity: int = 256, zeroed: bool = True) -> StaticKVCache:
        return StaticKVCache(self.num_layers, batch, self.kv_heads, self.head_dim, capacity,
                             self.attn_dtype, self.device, zeroed)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embed_w)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # Same arithmetic as HF's LlamaRMSNorm: normalise in fp32, scale in the model dtype.
        # (F.rms_norm is bit-identical to HF's pow/mean/rsqrt sequence, in fewer ops.)
        return weight * F.rms_norm(x.float(), x.shape[-1:], None, self.eps).to(x.dtype)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head: hidden states [B, n, d] -> logits [B, n, V]."""
        logits = rms_norm_linear(hidden, self.final_norm, self.eps, self.head_w, None, self.rms_norm)
        if self.head_ids is None:
            return logits
        full = logits.new_full(logits.shape[:-1] + (self.vocab_size,), float("-inf"))
        return full.index_copy_(-1, self.head_ids, logits)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for `positions`, shaped [n, 1, D] to broadcast over heads."""
        if int(positions.max()) >= self._cos.shape[0]:
            self._cos, self._sin = self._rope_table(2 * int(positions.max()) + 1)
        return self._cos[positions, None], self._sin[positions, None]

    def attention_mask(self, start: int, n: int, attn_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Additive [n, start + n] in the model dtype (0: visible, -inf: not): cached positions
        all visible, new ones causal (or as `attn_mask`, bool [n, n], says). Additive rather than
        bool because SDPA would convert a bool mask in every layer (~2% of an 8-row step here)."""
        if attn_mask is None:
            if n == 1:
                return None
            attn_mask = torch.ones(n, n, dtype=torch.bool, device=self.device).tril_()
        mask = torch.zeros(n, start + n, dtype=self.attn_dtype, device=self.device)
        mask[:, start:].masked_fill_(~attn_mask.to(self.device), float("-inf"))
        return mask

    def run_layer(self, i: int, x: torch.Tensor, cache: StaticKVCache, start: int,
                  cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Layer i over new positions x [B, n, d] placed at cache slots start..start+n."""
        L = self.layers[i]
        B, n, _ = x.shape
        H, KV, D = self.num_heads, self.kv_heads, self.head_dim
        qkv = rms_norm_linear(x, L.attn_norm, self.eps, L.qkv_w, L.qkv_b, self.rms_norm).view(B, n, H + 2 * KV, D)
        # Rotate q and k together: one [B, n, H+KV, D] op instead of one each.
        qk = qkv[:, :, :H + KV]
        qk = qk * cos + qk.roll(D // 2, dims=-1) * sin
        q = qk[:, :, :H].transpose(1, 2).to(self.attn_dtype)
        end = start + n
        cache.keys[i][:, :, start:end] = qk[:, :, H:].transpose(1, 2)
        cache.values[i][:, :, start:end] = qkv[:, :, H + KV:].transpose(1, 2)
        attn = F.scaled_dot_product_attention(
            q, cache.keys[i][:, :, :end], cache.values[i][:, :, :end],
            attn_mask=mask, enable_gqa=H != KV)
        x = x + linear(attn.transpose(1, 2).reshape(B, n, H * D).to(x.dtype), L.o_w)
        gate_up = rms_norm_linear(x, L.mlp_norm, self.eps, L.gate_up_w, None, self.rms_norm)
        return x + swiglu_linear(gate_up, L.down_w)

    # -- the whole forward ---------------------------------------------------------------
    @torch.no_grad()
    def hidden_states(self, cache: StaticKVCache, x: torch.Tensor, positions: torch.Tensor | None = None,
                      attn_mask: torch.Tensor | None = None, layers: range | None = None) -> torch.Tensor:
        """Run `layers` (default all) over new embeddings x; the cursor advances afterwards."""
        start, n = cache.length, x.shape[1]
        cache.reserve(start + n)
        if positions is None:
            positions = torch.arange(start, start + n, device=self.device)
        positions = positions.to(self.device)
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
