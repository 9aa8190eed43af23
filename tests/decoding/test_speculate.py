"""The drafter interface and the shared loop: a drafter written outside the package plugs into
`speculative_decode` with an acceptance rule from `decoding.accept`, and stays exact."""

from __future__ import annotations

import torch

import tokenleap
from reference import hf_greedy
from tokenleap.decoding import accept
from tokenleap.decoding.speculate import chain_step, speculative_decode
from tokenleap.drafters import Draft
from tokenleap.planner import plan_generation


class NoisyOracleDrafter:
    """Proposes a known continuation, wrong at every fifth position, each with a uniform draft
    law: no model, so both the accepting and the rejecting paths run."""

    def __init__(self, ctx, gamma: int, continuation: list[int]) -> None:
        self.ctx, self.gamma, self.continuation, self.commits = ctx, gamma, continuation, []

    def max_drafts(self, room: int) -> int:
        return min(self.gamma, room - 1)

    def propose(self, seq: list[int], n: int) -> Draft:
        vocab = self.ctx.target.runner.vocab_size
        at = len(seq) - len(self.ctx.prompt_ids)
        tokens = [(self.continuation[(at + i) % len(self.continuation)] + ((at + i) % 5 == 3)) % vocab for i in range(n)]
        return Draft(tokens, q=torch.full((n, vocab), 1.0 / vocab))

    def commit(self, seq: list[int], valid: int) -> None:
        self.commits.append(valid - len(seq))


def run(model, prompt, n, temperature, seed=0):
    ctx = plan_generation(prompt=prompt, method="ar", model=model, max_new_tokens=n, temperature=temperature,
                          top_k=0, top_p=1.0, seed=seed).ctx
    drafter = NoisyOracleDrafter(ctx, 3, hf_greedy(model, model.encode(prompt), n))
    rule = chain_step(lambda draft, p: accept.speculative(draft.tokens, draft.q, p, ctx.generator))
    tokens = [t for block in speculative_decode(ctx, drafter, rule) for t in block]
    return tokens, ctx, drafter


def test_a_new_drafter_plugs_in_and_stays_greedy(tiny):
    model = tiny(vocab_size=32, seed=0)
    for prompt in ("w2 w3 w2 w3 w2", "w5 w6"):
        tokens, ctx, drafter = run(model, prompt, 24, 0.0)
        assert tokens == hf_greedy(model, model.encode(prompt), 24)
        s = ctx.stats
        assert s.draft_forwards == 0 and s.accepted == sum(drafter.commits) == sum(s.accepted_at)
        assert 0 < s.accepted < s.proposed  # both paths ran


def test_the_counting_runner_counts_every_target_forward(tiny):
    model = tiny(vocab_size=32, seed=1)
    tokens, ctx, _ = run(model, "w2 w3", 20, 1.0, seed=3)
    # Each round emits its accepted drafts plus one token, each plain step one token; each is one
    # target forward, counted by the runner wrapper, not by the loop.
    assert len(tokens) == 20 and ctx.stats.target_forwards == len(tokens) - ctx.stats.accepted
    r = tokenleap.generate("w2 w3", model=model, max_new_tokens=20)
    assert r.stats.target_forwards == len(r.token_ids) and r.stats.draft_forwards == 0
