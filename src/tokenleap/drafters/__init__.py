"""Drafters: where draft tokens come from, one per file, each unaware of how they are judged.

- `draft_model.DraftModelDrafter`: a smaller model (or the target's own quantized copy,
  `draft="self:int8"`) drafting a chain token by token (sps).
- `beams.BeamDrafter`: the draft model beam-sampling a block of the joint law (MTAD).
- `lookahead`: PaSS's drafts, read off the lookahead rows of the target's previous call.

A method is a drafter plus an acceptance rule (`decoding.accept`), driven by the loop in
`decoding.speculate`. Adding a drafter is a new file here; no method needs an edit.
"""

from .base import Draft, Drafter

__all__ = ["Draft", "Drafter"]
