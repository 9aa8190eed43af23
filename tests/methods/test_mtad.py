"""MTAD's properties P1-P8 (shared/specs/mtad.md) on tiny-vocabulary random models."""

import dataclasses
import math

import pytest
import torch

import tokenleap
from tokenleap import Sampling, TokenleapError
from tokenleap.decoding.warping import warp
from tokenleap.decoding.accept import joint_prefix as accepted_length
from tokenleap.decoding.speculate import chain_step
from tokenleap.drafters.beams import BeamDrafter, beam_tree
from tokenleap.methods.mtad import joint_rule, tree_step
from tokenleap.planner import plan_generation
from laws import chi_square_pvalue, draws, exact_law
from reference import hf_greedy

V = 8
SAMPLING = Sampling(1.0)


@pytest.fixture
def pair(tiny):
    target = tiny(vocab_size=V, seed=11, init_std=0.1)
    draft = tiny(vocab_size=V, seed=12, init_std=0.1, num_layers=1)
    return target, draft


def context(target, draft, sampling=SAMPLING, seed=0, **options):
    return plan_generation(prompt="w2 w3", method="mtad", model=target, draft=draft, max_new_tokens=64, seed=seed,
                           options=options, **dataclasses.asdict(sampling)).ctx


def warped_probs(model, ids, sampling):
    with torch.inference_mode():
        return warp(model.hf_model(torch.tensor([ids])).logits[0], sampling)


def joint(model, prefix, block, sampling):
    """Product of warped conditionals of `block` after `prefix` under `model`."""
    probs = warped_probs(model, prefix + block, sampling)
    return math.prod(probs[len(prefix) - 1 + j, t].item() for j, t in enumerate(block))


def run_rounds(ctx, kind, rounds):
    """Run `rounds` MTAD rounds (chain or tree), yielding (context before, tokens emitted, n accepted)."""
    seq = list(ctx.prompt_ids)
    opts = ctx.options
    cache = ctx.new_cache(ctx.target, slack=128)
    drafter = BeamDrafter(ctx, opts.gamma, opts.beam_width, opts.without_replacement)
    step = chain_step(joint_rule(ctx)) if kind == "chain" else tree_step
    for _ in range(rounds):
        block = step(ctx, seq, cache, drafter, opts.gamma)
        yield list(seq), block, len(block) - 1  # the accepted drafts, then one token from the target
        seq.extend(block)


@pytest.mark.parametrize("sampling", [SAMPLING, Sampling(0.9, top_k=5, top_p=0.9)])
@pytest.mark.parametrize("step", ["chain", "tree"])
def test_p1_accepted_blocks_pass_the_joint_test(pair, sampling, step):
    target, draft = pair
    tau = 0.5
    seen = 0
    for seed in range(8):
        ctx = context(target, draft, sampling, seed=seed, gamma=3, beam_width=3, tau=tau)
        for before, block, n in run_rounds(ctx, step, 5):
            if n:
                accepted = block[:n]
                assert joint(target, before, accepted, sampling) > tau * joint(draft, before, accepted, sampling)
                seen += 1
    assert seen > 10


def test_p2_infinite_tau_accepts_nothing_and_samples_the_target(pair):
    target, draft = pair
    law = exact_law(target, target.encode("w2 w3"), 2, SAMPLING)
    samples = []
    for seed in range(2000):
        r = tokenleap.generate("w2 w3", method="mtad", model=target, draft=draft, max_new_tokens=4,
                               temperature=1.0, seed=seed, gamma=2, beam_width=2, tau=math.inf)
        assert r.stats.accepted == 0
        samples.append(tuple(r.token_ids[:2]) if r.token_ids[0] not in target.eos_token_ids else (r.token_ids[0],))
    assert chi_square_pvalue(samples, law) > 1e-3
    # Power: with tau = 1e-9 the draft's blocks are taken and the law moves away.
    biased = [tuple(r) for r in draws("mtad", target, draft, SAMPLING, 2000, max_new_tokens=3, gamma=2,
                                      beam_width=1, tau=1e-9)]
    biased = [s[:1] if s[0] in target.eos_token_ids else s[:2] for s in biased]
    assert chi_square_pvalue(biased, law) < 1e-6


def test_p3_tiny_tau_accepts_whole_blocks(pair):
    target, draft = pair
    for seed in range(5):
        r = tokenleap.generate("w2 w3", method="mtad", model=target, draft=draft, max_new_tokens=30,
                               temperature=1.0, seed=seed, gamma=3, beam_width=2, tau=1e-300)
        assert set(r.stats.accepted_hist) == {3}


@pytest.mark.parametrize("method", ["mtad", "mtad-tree"])
def test_p4_draft_equal_to_target_is_fully_accepted(pair, method):
    target, _ = pair
    for seed in range(5):
        r = tokenleap.generate("w2 w3", method=method, model=target, draft=target, max_new_tokens=30,
                               temperature=1.0, top_k=6, seed=seed, gamma=4, beam_width=3, tau=0.9)
        assert set(r.stats.accepted_hist) == {4}


def test_p5_accepted_length_is_non_increasing_in_tau():
    gen = torch.Generator().manual_seed(0)
    taus = [1e-6, 0.01, 0.1, 0.5, 0.9, 1.0, 2.0, 10.0]
    for _ in range(200):
        logp = -torch.rand(5, generator=gen) * 3
        logq = -torch.rand(5, generator=gen) * 3
        lengths = [accepted_length(logp, logq, tau) for tau in taus]
        assert lengths == sorted(lengths, reverse=True)
    # The longest passing prefix wins, not the first failure.
    assert accepted_length(torch.tensor([-1.0, 0.0, 0.0]), torch.tensor([0.0, -2.0, 0.0]), 0.5) == 3


def test_p6_extra_token_follows_the_target_after_the_accepted_block(pair):
    target, draft = pair
    # tau -> 0: blocks of 2 are always accepted, so token 3 is the extra token after x1, x2.
    outs = draws("mtad", target, draft, SAMPLING, 3000, max_new_tokens=3, gamma=2, beam_width=2, tau=1e-300)
    outs = [o for o in outs if len(o) == 3]
    prefix = max(set(o[:2] for o in outs), key=lambda p: sum(o[:2] == p for o in outs))
    thirds = [(o[2],) for o in outs if o[:2] == prefix]
    assert len(thirds) > 300
    p = warped_probs(target, target.encode("w2 w3") + list(prefix), SAMPLING)[-1]
    law = {(v,): p[v].item() for v in range(V) if p[v] > 0}
    assert chi_square_pvalue(thirds, law) > 1e-3


@pytest.mark.parametrize("method,opts", [("mtad", dict(gamma=3, beam_width=4)), ("mtad-tree", dict(gamma=3))])
def test_p7_greedy_output_equals_target_greedy(pair, method, opts):
    target, draft = pair
    greedy = tokenleap.generate("w2 w3", model=target, max_new_tokens=40).token_ids
    assert tokenleap.generate("w2 w3", method=method, model=target, draft=draft, max_new_tokens=40,
                              tau=0.5, **opts).token_ids == greedy


def test_p8_single_beam_first_token_law(pair):
    target, draft = pair
    prompt = target.encode("w2 w3")
    tau, gamma = 0.5, 2
    q1 = warped_probs(draft, prompt, SAMPLING)[-1]
    p1 = warped_probs(target, prompt, SAMPLING)[-1]
    law = {(v,): 0.0 for v in range(V)}
    for x1 in range(V):
        q2 = warped_probs(draft, prompt + [x1], SAMPLING)[-1]
        p2 = warped_probs(target, prompt + [x1], SAMPLING)[-1]
        for x2 in range(V):
            Q = q1[x1].item() * q2[x2].item()
            n = accepted_length(torch.tensor([p1[x1], p2[x2]]).log(), torch.tensor([q1[x1], q2[x2]]).log(), tau)
            if n >= 1:
                law[(x1,)] += Q
            else:
                for v in range(V):
                    law[(v,)] += Q * p1[v].item()
    firsts = [(o[0],) for o in draws("mtad", target, draft, SAMPLING, 3000, max_new_tokens=3, gamma=gamma,
                                     beam_width=1, tau=tau)]
    assert chi_square_pvalue(firsts, law) > 1e-3
    # Power: the target's own first-token law is a different law.
    target_law = {(v,): p1[v].item() for v in range(V)}
    assert sum(abs(law[c] - target_law[c]) for c in law) > 0.1
    assert chi_square_pvalue(firsts, target_law) < 1e-6


def test_tree_with_one_beam_equals_the_chain(pair):
    target, draft = pair
    for seed in range(5):
        kw = dict(model=target, draft=draft, max_new_tokens=30, temperature=1.0, seed=seed, gamma=3, beam_width=1)
        chain = tokenleap.generate("w2 w3", method="mtad", **kw)
        tree = tokenleap.generate("w2 w3", method="mtad-tree", **kw)
        assert chain.token_ids == tree.token_ids


def test_beam_tree_shares_identical_draws():
    from tokenleap.drafters.beams import Beams

    t = torch.tensor
    history = [(t([5, 5, 6]), t([-0.1, -0.1, -2.0]), t([0, 0, 0])),
               (t([7, 7, 8]), t([-0.5, -0.5, -0.3]), t([0, 1, 2]))]
    beams = Beams(tokens=t([[5, 7], [5, 7], [6, 8]]), logq=t([[0.0] * 2] * 3), weights=t([0.4, 0.4, 0.2]),
                  history=history)
    nodes = beam_tree(beams)
    assert [(n.token, n.parent, n.depth) for n in nodes] == [(5, -1, 0), (6, -1, 0), (7, 0, 1), (8, 1, 1)]


def test_stats_and_perplexity(pair):
    target, draft = pair
    r = tokenleap.generate("w2 w3", method="mtad", model=target, draft=draft, max_new_tokens=30,
                           temperature=1.0, seed=1, gamma=4, beam_width=4)
    s = r.stats
    assert s.proposed == 4 * s.iterations and s.accepted == sum(k * v for k, v in s.accepted_hist.items())
    assert s.draft_forwards == 4 * s.iterations
    ppl = tokenleap.perplexity(target, r.prompt_ids, r.token_ids)
    assert 1.0 <= ppl < V * 2


@pytest.mark.parametrize("opts,message", [(dict(tau=0.0), "tau"), (dict(tau=-1.0), "tau"),
                                          (dict(beam_width=0), "beam_width"), (dict(gamma=1), "gamma")])
def test_bad_options(pair, opts, message):
    target, draft = pair
    with pytest.raises(TokenleapError, match=message):
        tokenleap.generate("w2", method="mtad", model=target, draft=draft, **opts)


def test_missing_draft(pair):
    with pytest.raises(TokenleapError, match="needs a draft"):
        tokenleap.generate("w2", method="mtad-tree", model=pair[0])


def priced(model, curve, batches=None):
    """A copy of `model` whose cost model reads this step-cost curve (ms by rows; and by batch of
    one-position sequences, `batches`) instead of measuring it."""
    model = dataclasses.replace(model, eos_token_ids=frozenset({V}))  # and no EOS: every run is max_new_tokens
    model.memo(("cost-curve",), lambda: curve)
    model.memo(("cost-batch-curve",), lambda: batches or {b: curve[b] for b in (2, 4, 8) if b in curve})
    return model


FLAT = {1: 10.0, 2: 10.0, 4: 10.5, 8: 11.0, 16: 12.0, 32: 14.0}  # rows nearly free
STEEP = {1: 10.0, 2: 19.0, 4: 37.0, 8: 73.0, 16: 145.0}  # every row costs a whole step


@pytest.mark.parametrize("method", ["mtad", "mtad-tree"])
def test_auto_gamma_where_no_block_pays_is_plain_greedy_decoding(pair, method):
    """gamma=auto with a draft step that costs as much as a target row: no block pays even with
    every draft accepted, so every token is a plain target step, and at T=0 that is greedy."""
    target, draft = priced(pair[0], STEEP), priced(pair[1], {1: 9.0, 4: 36.0, 16: 144.0}, {2: 18.0, 4: 36.0, 8: 72.0})
    r = tokenleap.generate("w2 w3", method=method, model=target, draft=draft, max_new_tokens=20)
    assert r.token_ids == hf_greedy(target, target.encode("w2 w3"), 20)
    assert r.stats.method_stats.drafts_chosen == {"0": 20} and r.stats.draft_forwards == 0


@pytest.mark.parametrize("method", ["mtad", "mtad-tree"])
def test_auto_gamma_where_blocks_are_cheap_drafts_blocks_of_two_or_more(pair, method):
    target, draft = priced(pair[0], FLAT), priced(pair[1], {1: 0.5, 4: 0.6, 16: 1.0, 64: 2.0}, {2: 0.6, 4: 0.7, 8: 0.9})
    r = tokenleap.generate("w2 w3", method=method, model=target, draft=draft, max_new_tokens=40,
                           temperature=1.0, seed=3)
    chosen = r.stats.method_stats.drafts_chosen
    assert "1" not in chosen and sum(n for g, n in chosen.items() if int(g) >= 2) == r.stats.iterations > 0
    assert r.stats.draft_forwards == sum(int(g) * n for g, n in chosen.items())  # a forward per block token
