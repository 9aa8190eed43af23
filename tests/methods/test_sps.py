"""Speculative sampling preserves the target's (warped) distribution, checked exactly."""

import pytest

import tokenleap
from tokenleap import Sampling
from laws import chi_square_pvalue, draws, exact_law

V = 8


@pytest.mark.parametrize("sampling,gamma", [(Sampling(1.0), 2), (Sampling(1.0), 1),
                                            (Sampling(0.8, top_k=5, top_p=0.9), 3),
                                            (Sampling(1.0), 0)])  # 0: chosen each round (auto)
def test_sps_first_two_tokens_follow_the_target_law(tiny, sampling, gamma):
    target = tiny(vocab_size=V, seed=11, init_std=0.1)
    draft = tiny(vocab_size=V, seed=12, init_std=0.1, num_layers=1)
    n = 3000
    law = exact_law(target, target.encode("w2 w3"), 2, sampling)
    samples = draws("sps", target, draft, sampling, n, gamma=gamma)
    assert chi_square_pvalue(samples, law) > 1e-3
    # The test has power: the draft's own law is told apart from the target's.
    draft_law = exact_law(draft, target.encode("w2 w3"), 2, sampling)
    assert sum(abs(draft_law.get(c, 0) - law[c]) for c in law) > 0.2
    draft_samples = draws("ar", draft, None, sampling, n)
    assert chi_square_pvalue(draft_samples, law) < 1e-6


def test_early_stopped_drafting_keeps_the_target_law(tiny):
    # Three tokens, so a round drafts two and stop_below can cut it after the first.
    sampling = Sampling(1.0, top_k=3)
    target = tiny(vocab_size=V, seed=11, init_std=0.1)
    draft = tiny(vocab_size=V, seed=12, init_std=0.1, num_layers=1)
    law = exact_law(target, target.encode("w2 w3"), 3, sampling)
    samples = draws("sps", target, draft, sampling, 3000, max_new_tokens=3, gamma=3, stop_below=0.4)
    assert chi_square_pvalue(samples, law) > 1e-3

    def proposed(stop_below):
        return sum(tokenleap.generate("w2 w3", method="sps", model=target, draft=draft, max_new_tokens=3, gamma=3,
                                      stop_below=stop_below, temperature=1.0, top_k=3, seed=s).stats.proposed
                   for s in range(30))
    assert proposed(0.4) < proposed(0.0)  # some rounds were cut short


def test_same_seed_same_output(tiny):
    target = tiny(vocab_size=32, seed=0, init_std=0.05)
    draft = tiny(vocab_size=32, seed=5, num_layers=1, init_std=0.05)
    runs = [tokenleap.generate("w2", method="sps", model=target, draft=draft, temperature=1.0,
                               max_new_tokens=30, seed=s).token_ids for s in (4, 4, 5)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_stats_are_consistent(tiny):
    target = tiny(vocab_size=32, seed=0)
    draft = tiny(vocab_size=32, seed=9, num_layers=1)
    r = tokenleap.generate("w2 w3", method="sps", model=target, draft=draft, max_new_tokens=40, gamma=4)
    s = r.stats
    assert s.new_tokens == len(r.token_ids) == 40
    assert s.target_forwards == s.iterations + (1 if s.new_tokens - s.accepted - s.iterations == 1 else 0)
    assert s.accepted == sum(s.accepted_at) and s.proposed == sum(s.proposed_at)
    assert s.accepted == sum(k * v for k, v in s.accepted_hist.items())
    assert 1.0 <= s.mean_accepted_length <= 5.0


def test_stop_below_ends_drafting_at_an_unsure_draft(tiny):
    target = tiny(vocab_size=32, seed=0)
    draft = tiny(vocab_size=32, seed=9, num_layers=1)
    full = tokenleap.generate("w2 w3", method="sps", model=target, draft=draft, max_new_tokens=40, gamma=4)
    early = tokenleap.generate("w2 w3", method="sps", model=target, draft=draft, max_new_tokens=40, gamma=4,
                               stop_below=0.5)
    assert early.token_ids == full.token_ids  # greedy either way
    assert early.stats.proposed < full.stats.proposed and early.stats.iterations >= full.stats.iterations
    with pytest.raises(tokenleap.TokenleapError, match=r"stop_below must be a number in \[0, 1\)"):
        tokenleap.generate("w2", method="sps", model=target, draft=draft, stop_below=1.0)


@pytest.mark.parametrize("method", ["sps", "mtad"])
def test_a_self_draft_takes_the_prompt_from_the_target(tiny, method):
    """`draft="self:int8"`: the first token is a plain target step, and the draft starts from the
    target's K/V of the prompt instead of its own forward over it (no draft forward of more than
    the uncached tail; "WxN": W rows of N positions); greedy output stays the target's, and the drafts are still accepted."""
    target = tiny(vocab_size=32, seed=0)
    prompt = target.encode("w2 w3 w4 w5 w6 w7 w8 w9 w10 w11")
    want = tokenleap.generate(prompt, model=target, max_new_tokens=16).token_ids
    got = tokenleap.generate(prompt, method=method, model=target, draft="self:int8", max_new_tokens=16, gamma=3)
    assert got.token_ids == want and got.stats.accepted > 0
    rows = got.stats.forward_rows
    assert rows["target"].get(str(len(prompt))) == 1 and max(int(r.split("x")[-1]) for r in rows["draft"]) <= 2
    # A draft that is not the target's own view runs its own forward over the prompt.
    other = tiny(vocab_size=32, seed=5, num_layers=1)
    got = tokenleap.generate(prompt, method=method, model=target, draft=other, max_new_tokens=16, gamma=3)
    assert got.token_ids == want and max(int(r.split("x")[-1]) for r in got.stats.forward_rows["draft"]) >= len(prompt)


def test_a_self_draft_taking_the_prompt_keeps_the_target_law(tiny):
    """Three tokens at T=1 (top-k 3): a plain first step, then a round of the self-draft's two
    drafts on the copied prompt; the law is the target's exactly."""
    sampling = Sampling(1.0, top_k=3)
    target = tiny(vocab_size=V, seed=11, init_std=0.1)
    law = exact_law(target, target.encode("w2 w3"), 3, sampling)
    samples = draws("sps", target, "self:int8", sampling, 3000, max_new_tokens=3, gamma=2)
    assert chi_square_pvalue(samples, law) > 1e-3
