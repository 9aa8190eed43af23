"""Prompt lookup decoding: the drafter's matching and adaptivity, plain steps without a match,
the exact output law under sampling, and a gain on text that repeats."""

import dataclasses
import random

import pytest
import torch

import tokenleap
from tokenleap import Sampling
from tokenleap.cli import main
from tokenleap.decoding.context import DecodeContext
from tokenleap.decoding.speculate import chain_step, speculative_decode
from tokenleap.decoding.stats import DecodeStats
from tokenleap.decoding.warping import sample
from tokenleap.drafters.prompt_lookup import PromptLookupDrafter
from tokenleap.generation import run
from tokenleap.methods.pld import PLDOptions
from tokenleap.planner import plan_generation
from laws import chi_square_pvalue, draws, exact_law

pytestmark = pytest.mark.usefixtures("one_thread")

V = 8
REPEATING = "w2 w3 w4 w2 w3 w4 w2 w3"  # every suffix has an earlier occurrence


def context(model, prompt_ids=(2,), **options) -> DecodeContext:
    return DecodeContext(model, None, list(prompt_ids), Sampling(), torch.Generator().manual_seed(0),
                         DecodeStats("pld"), 16, PLDOptions(**options))


def drafter(model, **kwargs) -> PromptLookupDrafter:
    return PromptLookupDrafter(context(model), **kwargs)


def reference_draft(seq, n, max_ngram, min_ngram):
    """Brute force: the most recent earlier occurrence of the longest matching suffix n-gram,
    its continuation read on cyclically, cut after an EOS (id 1 in the tiny models)."""
    for size in range(max_ngram, min_ngram - 1, -1):
        if len(seq) <= size:
            continue
        starts = [i for i in range(size, len(seq)) if seq[i - size:i] == seq[-size:]]
        if starts:
            tail = seq[starts[-1]:]
            tokens = [tail[k % len(tail)] for k in range(n)]
            return tokens[:tokens.index(1) + 1] if 1 in tokens else tokens
    return []


def test_longest_ngram_first_then_most_recent_match(tiny):
    model = tiny(vocab_size=32, seed=0)
    seq = [2, 3, 4, 9, 7, 3, 4, 8, 2, 3, 4]
    assert drafter(model).propose(seq, 3).tokens == [9, 7, 3]  # the trigram 2 3 4 matched
    assert drafter(model, max_ngram=2).propose(seq, 3).tokens == [8, 2, 3]  # 3 4: the most recent match
    # Nothing matches: an empty draft (the loop then takes a plain step).
    assert drafter(model).propose([2, 3, 4, 5], 4).tokens == []
    assert drafter(model, max_ngram=3, min_ngram=2).propose([2, 3, 5, 3], 4).tokens == []
    # A match whose continuation runs into the suffix: the period repeats.
    assert drafter(model).propose([5, 6, 7, 5, 6, 7], 7).tokens == [5, 6, 7, 5, 6, 7, 5]
    # Nothing is kept after an EOS (id 1): the draft stops there.
    assert drafter(model).propose([2, 1, 3, 2], 4).tokens == [1]


def test_incremental_index_matches_brute_force(tiny):
    model = tiny(vocab_size=32, seed=0)
    rng = random.Random(0)
    for max_ngram, min_ngram in [(3, 1), (2, 2), (4, 2)]:
        d = drafter(model, max_ngram=max_ngram, min_ngram=min_ngram)
        seq = [rng.randrange(2, 6) for _ in range(3)]
        while len(seq) < 120:  # the sequence grows by a few tokens each round, as in decoding
            n = rng.randrange(1, 8)
            draft = d.propose(seq, n)
            assert draft.tokens == reference_draft(seq, n, max_ngram, min_ngram), seq
            if draft.tokens:  # one-hot laws over the target's vocabulary
                assert draft.q.shape == (len(draft.tokens), 32)
                assert torch.equal(draft.q.argmax(-1), torch.tensor(draft.tokens)) and torch.all(draft.q.sum(-1) == 1)
            seq += [rng.randrange(1 if rng.random() < 0.05 else 2, 6) for _ in range(rng.randrange(1, 4))]


def test_draft_length_adapts_to_acceptance(tiny):
    model = tiny(vocab_size=32, seed=0)
    seq = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 2, 3]  # "2 3" matched: 4 .. 13 follow

    def round_(d, kept):
        draft = d.propose(seq, d.max_drafts(room=100))
        d.commit(seq, len(seq) + kept)
        return len(draft.tokens)

    d = drafter(model, num_draft=8)
    assert round_(d, kept=8) == 8 and d.length == 8  # all kept: num_draft, not past it
    assert round_(d, kept=3) == 8 and d.length == 7  # fewer than half kept: one fewer
    assert round_(d, kept=0) == 7 and d.length == 6
    assert round_(d, kept=3) == 6 and d.length == 6  # half kept: unchanged
    assert round_(d, kept=6) == 6 and d.length == 8  # all kept: back to num_draft
    for _ in range(10):
        round_(d, kept=0)
    assert d.length == 1  # never below one
    assert d.max_drafts(room=1) == 0  # the target's own token needs the last place
    fixed = drafter(model, num_draft=8, adaptive=False)
    round_(fixed, kept=0)
    assert fixed.length == 8 and fixed.max_drafts(room=5) == 4


def test_no_match_is_a_plain_target_step(tiny):
    model = tiny(vocab_size=32, seed=0)
    ar = tokenleap.generate([2, 3, 4], method="ar", model=model, max_new_tokens=1).token_ids
    ctx = context(model, [2, 3, 4])
    cache = ctx.new_cache(model)
    step = chain_step(lambda draft, p: pytest.fail("no draft must be judged"))
    assert step(ctx, [2, 3, 4], cache, PromptLookupDrafter(ctx), 10) == ar
    assert ctx.stats.target_forwards == 1 and ctx.stats.iterations == 0 and ctx.stats.proposed == 0
    assert cache.length == 3  # the target has seen the sequence, as after any step


def test_greedy_gains_on_text_that_repeats(tiny):
    # This target's greedy output falls into a loop: the repeated text is drafted and kept.
    model = tiny(vocab_size=32, seed=0)
    ar = tokenleap.generate("w2 w3 w4", method="ar", model=model, max_new_tokens=48)
    pld = tokenleap.generate("w2 w3 w4", method="pld", model=model, max_new_tokens=48)
    assert pld.token_ids == ar.token_ids
    s = pld.stats
    assert s.mean_accepted_length > 2 and s.draft_forwards == 0
    assert s.new_tokens == s.target_forwards + s.accepted  # every forward adds one token of its own
    fixed = tokenleap.generate("w2 w3 w4", method="pld", model=model, max_new_tokens=48, adaptive=False)
    assert fixed.token_ids == ar.token_ids
    assert s.proposed < fixed.stats.proposed  # adapting wastes fewer drafts


def test_options_are_checked_and_reach_the_cli(tiny_dir, capsys):
    with pytest.raises(tokenleap.TokenleapError, match="min_ngram"):
        tokenleap.generate("w2", method="pld", model=tiny_dir(vocab_size=32, seed=0), max_ngram=2, min_ngram=3)
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = capsys.readouterr().out
    assert all(f in help_text for f in ("--num-draft", "--max-ngram", "--min-ngram", "--adaptive")), help_text
    assert main(["generate", REPEATING, "--model", tiny_dir(vocab_size=32, seed=0), "--dtype", "fp32",
                 "--method", "pld", "--num-draft", "4", "-n", "8"]) == 0
    assert len(capsys.readouterr().out.split()) == 8


@pytest.mark.parametrize("sampling,tokens,num_draft", [(Sampling(1.0), 2, 10), (Sampling(1.0), 3, 2),
                                                       (Sampling(0.8, top_k=3), 3, 10)])
def test_pld_follows_the_target_law(tiny, sampling, tokens, num_draft):
    target = tiny(vocab_size=V, seed=11, init_std=0.1)
    law = exact_law(target, target.encode(REPEATING), tokens, sampling)
    samples = draws("pld", target, None, sampling, 3000, prompt=REPEATING, max_new_tokens=tokens,
                    num_draft=num_draft)
    assert chi_square_pvalue(samples, law) > 1e-3


def naive_decode(ctx):
    """The usual mistake: on a rejection, sample from p itself rather than p without the draft."""
    def rule(draft, p):
        for i, d in enumerate(draft.tokens):
            if torch.rand((), generator=ctx.generator, dtype=torch.float64) >= p[i, d]:
                return i, int(sample(p[i], ctx.generator))
        return len(draft.tokens), int(sample(p[len(draft.tokens)], ctx.generator))
    return speculative_decode(ctx, PromptLookupDrafter(ctx), chain_step(rule))


def test_the_law_test_has_power(tiny):
    # The same draws with the naive rejection (drafted tokens come out too often) fail it.
    target = tiny(vocab_size=V, seed=11, init_std=0.1)
    law = exact_law(target, target.encode(REPEATING), 2, Sampling(1.0))
    samples = []
    for seed in range(3000):
        plan = plan_generation(prompt=REPEATING, method="pld", model=target, max_new_tokens=2, temperature=1.0,
                               top_k=0, top_p=1.0, seed=seed)
        plan = dataclasses.replace(plan, spec=dataclasses.replace(plan.spec, decode=naive_decode))
        samples.append(tuple(next(p for p in run(plan) if isinstance(p, tokenleap.GenerationResult)).token_ids))
    assert chi_square_pvalue(samples, law) < 1e-6
