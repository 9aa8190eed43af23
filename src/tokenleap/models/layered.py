"""Per-layer access to a transformers model through its own forward: run layers a..b, start
from a hidden state instead of token ids, look at (or stop after) every layer. PPD needs this
on any family, and the lean runner gives it only for the Llama family.

The decoder stack is found from the model's own structure, not a table of attribute names:
`get_decoder()` is the model's base, and its layers are the child `ModuleList` holding
`num_hidden_layers` modules. A shallow copy of the decoder (the same parameters; the model
itself is left untouched) gets each layer wrapped in a `LayerGate`, which runs the layer, or
passes its input through, as the calling thread's `LayerPlan` says. So a partial forward is the model's
own decoder forward (its embeddings, positions, rotary tables, masks and final norm), with the
layers outside the plan passed over. `check_split` verifies the split against the plain
forward once per model, and a model whose forward does not split so is refused cleanly.

The same structure serves the trainers: `decoder_layers` (the draft trainer picks target layers
by it) and `output_modules` (the modules after the last layer, which a trained exit head copies).
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import TokenleapError


class StopForward(Exception):
    """Raised by a plan's `before` to end a partial forward at a layer boundary."""


@dataclass
class LayerPlan:
    """Run layers start..stop-1. `inject`: the hidden states entering layer `start` (None: the
    model's own embeddings of the ids). `before(i)` runs before layer i (it may raise
    StopForward); `after(i, h)` sees layer i's output."""

    start: int
    stop: int
    inject: torch.Tensor | None = None
    before: Callable[[int], None] | None = None
    after: Callable[[int, torch.Tensor], None] | None = None


class LayerGate(torch.nn.Module):
    """One decoder layer, run or passed over as the calling thread's plan says (see the module
    docstring). Attributes the model reads from its layers (e.g. `attention_type`) are the
    wrapped layer's."""

    def __init__(self, layer: torch.nn.Module, index: int, stack: "LayerStack") -> None:
        super().__init__()
        self.layer = layer
        self.index = index
        self._stack = stack

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["layer"], name)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        plan = self._stack.plan()
        if plan is None:
            return self.layer(hidden_states, *args, **kwargs)
        i = self.index
        if plan.inject is not None and i == min(plan.start, self._stack.num_layers - 1):
            hidden_states = plan.inject
        if plan.start <= i < plan.stop:
            if plan.before is not None:
                plan.before(i)
            out = self.layer(hidden_states, *args, **kwargs)
            hidden_states = out[0] if self._stack.returns_tuple else out
            if plan.after is not None:
                plan.after(i, hidden_states)
        # Passed over or run, the decoder gets what its layers return (Falcon's: a tuple).
        return (hidden_states,) if self._stack.returns_tuple else hidden_states


def decoder_layers(hf_model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """(the model's decoder, the name of its layer list there): `get_decoder()`, and its one child
    `ModuleList` of num_hidden_layers modules (see the module docstring). A TokenleapError naming
    the model type when there is not exactly one."""
    decoder = hf_model.get_decoder()
    num_layers = hf_model.config.get_text_config(decoder=True).num_hidden_layers
    names = [name for name, m in decoder.named_children()
             if isinstance(m, torch.nn.ModuleList) and len(m) == num_layers]
    if len(names) != 1:
        raise TokenleapError(f"cannot find the decoder layers of model type {hf_model.config.model_type!r} "
                             "(no single list of num_hidden_layers modules in its decoder)")
    return decoder, names[0]


@torch.no_grad()
def output_modules(hf_model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder's own modules that turn its last layer's output into what the output
    embeddings read (the final norm; OPT's final norm and projection), in the order they run.

    Found by watching a tiny plain forward (the decoder's children that run after its last layer),
    not from attribute names, and checked: applied in turn to the last layer's output they must
    give the decoder's output, else a TokenleapError naming the model type (a trained early-exit
    head copies them, so they must be the whole transform)."""
    decoder, name = decoder_layers(hf_model)
    last = getattr(decoder, name)[-1]
    last_out: list[torch.Tensor] = []
    ran_after: list[torch.nn.Module] = []

    def watch(module: torch.nn.Module):
        def hook(_m, _args, out) -> None:
            if module is last:
                last_out.append(out[0] if isinstance(out, tuple) else out)
            elif last_out:  # ran after the last layer (rotary tables, embeddings run before it)
                ran_after.append(module)
        return hook

    watched = [last] + [m for n, m in decoder.named_children() if n != name]
    hooks = [m.register_forward_hook(watch(m)) for m in watched]
    try:
        want = decoder(input_ids=torch.tensor([[1, 2]], device=hf_model.device)).last_hidden_state
    finally:
        for h in hooks:
            h.remove()
    x = last_out[0] if last_out else None
    for m in ran_after if x is not None else ():
        x = m(x)
    if x is None or x.shape != want.shape or not torch.allclose(x.float(), want.float(), atol=1e-3, rtol=1e-3):
        raise TokenleapError(f"cannot find the output transform (final norm) of model type "
                             f"{hf_model.config.model_type!r}: the modules its decoder runs after its last layer "
                             "do not give its output")
    return ran_after


def final_logit_cap(config) -> float | None:
    """The final logit soft-capping a model's config asks for (Gemma 2), or None."""
    return getattr(config.get_text_config(decoder=True), "final_logit_softcapping", None)


def soft_cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(logits / cap), as the model's own head applies it; logits unchanged without a cap."""
    return torch.tanh(logits / cap) * cap if cap else logits


class LayerStack:
    """A gated view of one transformers model's decoder (made once per runner:
    `HFRunner.layer_stack`). Building one runs a tiny plain forward; a model whose decoder
    cannot be found or run so is a TokenleapError naming its type."""

    def __init__(self, hf_model: torch.nn.Module) -> None:
        self.hf_model = hf_model
        original, name = decoder_layers(hf_model)
        self.num_layers = hf_model.config.get_text_config(decoder=True).num_hidden_layers
        self._local = threading.local()
        # What a layer returns (a tensor, or a tuple led by it): seen once on a plain forward.
        seen: list[bool] = []
        layers = getattr(original, name)
        hook = layers[0].register_forward_hook(lambda _m, _a, out: seen.append(isinstance(out, tuple)))
        try:
            with torch.no_grad():
                hf_model(input_ids=torch.tensor([[1, 2]], device=hf_model.device))
        finally:
            hook.remove()
        self.returns_tuple = bool(seen and seen[0])
        # The gates go into a shallow copy of the decoder (its own child table, the same
        # parameters): the user's model, and HF `generate` on it, stay exactly as they were.
        self.decoder = copy.copy(original)
        self.decoder._modules = dict(original._modules)
        self.layers = torch.nn.ModuleList(LayerGate(layer, i, self) for i, layer in enumerate(layers))
        self.decoder._modules[name] = self.layers

    def plan(self) -> LayerPlan | None:
        return getattr(self._local, "plan", None)

    def layer(self, i: int) -> torch.nn.Module:
        return self.layers[i].layer

    def run(self, plan: LayerPlan, ids: torch.Tensor, positions: torch.Tensor, cache=None,
            attention_mask=None) -> torch.Tensor:
        """The decoder forward under `plan` over ids [B, n] at `positions` [n]: its final-normed
        output [B, n, D] (the ids only shape the call when the plan injects hidden states)."""
        # Reentrant: a plan's callback may itself run the stack (the shared exit head's final norm,
        # at layer d of a main stream), and the outer plan must hold again after it.
        outer, self._local.plan = self.plan(), plan
        try:
            out = self.decoder(input_ids=ids, position_ids=positions[None].expand(ids.shape[0], -1), cache=cache,
                               use_cache=cache is not None, attention_mask=attention_mask)
        finally:
            self._local.plan = outer
        return out.last_hidden_state

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The decoder's own output transform (final norm, OPT's projection) on hidden [B, n, D]."""
        n = hidden.shape[1]
        dummy = torch.zeros(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        return self.run(LayerPlan(self.num_layers, self.num_layers, hidden), dummy,
                        torch.arange(n, device=hidden.device))

    def logits(self, normed: torch.Tensor) -> torch.Tensor:
        """Output embeddings on final-normed states, with the final soft-capping the model's
        config asks for (Gemma 2)."""
        return soft_cap(self.hf_model.get_output_embeddings()(normed), final_logit_cap(self.hf_model.config))

    def layer_size(self) -> int:
        """Parameters of one layer: PPD's latency unit (multiply-adds per token)."""
        return sum(p.numel() for p in self.layer(0).parameters())


@torch.no_grad()
def check_split(stack: LayerStack, new_cache: Callable[[], object], masks: Callable[..., object]) -> None:
    """The split forward (layers 0..m, then m..l from the injected state, then the head) must
    give the model's own logits: else its forward does not decompose into layers, and PPD is
    refused for it with a clean error."""
    model = stack.hf_model
    ids = torch.arange(2, 6, device=model.device)[None] % model.config.get_text_config(decoder=True).vocab_size
    positions = torch.arange(ids.shape[1], device=model.device)
    want = model(input_ids=ids).logits.float()
    m = max(1, stack.num_layers // 2)
    kept: list[torch.Tensor] = []
    cache = new_cache()
    mask = masks(0, positions, None)
    stack.run(LayerPlan(0, m, after=lambda i, h: kept.append(h) if i == m - 1 else None), ids, positions,
              cache.inner, mask)
    normed = stack.run(LayerPlan(m, stack.num_layers, kept[0]), ids, positions, cache.inner, mask)
    got = stack.logits(normed).float()
    if not torch.allclose(got, want, atol=1e-3 * (1 + want.abs().max().item()), rtol=1e-3):
        raise TokenleapError(f"model type {model.config.model_type!r} does not split into layers through its "
                             "decoder (the split forward differs from the model's own), which ppd needs")
