"""PaSS: the target law is kept, the cache stays exact, two calls per iteration, options checked.

Greedy equality with HF generate (every L, embeddings and scheme, both runners) comes from
OPTION_SETS in test_lossless.py."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import tokenleap
from tokenleap import Sampling, TokenleapError
import tokenleap.decoding.accept
from tokenleap.methods import pass_
from tokenleap.models import lookahead as la_artifact
from tokenleap.planner import plan_generation
from laws import chi_square_pvalue, draws, exact_law
from reference import hf_greedy

V = 8


pytestmark = pytest.mark.usefixtures("one_thread")

def pass_draws(target, sampling, n, **opts):
    # 6 new tokens so the first iteration drafts (y, up to L drafts, z); the law is checked on
    # the first 3, which the drafts and the bonus/residual token produce.
    return [s[:3] for s in draws("pass", target, None, sampling, n, max_new_tokens=6, **opts)]


@pytest.mark.parametrize("sampling,opts", [
    (Sampling(1.0), {"lookahead": 2, "embeddings": "random", "scheme": "two-call"}),
    (Sampling(1.0), {"lookahead": 3, "embeddings": "mean", "scheme": "merged"}),
    (Sampling(0.8, top_k=5, top_p=0.9), {"lookahead": 4, "embeddings": "random", "scheme": "merged"}),
    (Sampling(1.0), {"lookahead": 2, "embeddings": "random", "candidates": 1}),
    (Sampling(0.8, top_k=5, top_p=0.9), {"lookahead": 3, "embeddings": "mean", "candidates": 1}),
    (Sampling(1.0), {"lookahead": 1, "embeddings": "random"}),  # the defaults: 3 candidates
    (Sampling(0.8, top_k=5, top_p=0.9), {"lookahead": 2, "embeddings": "mean", "candidates": 4}),
])
def test_sampling_follows_the_target_law(tiny, sampling, opts):
    target = tiny(vocab_size=V, seed=11, init_std=0.1)
    law = exact_law(target, target.encode("w2 w3"), 3, sampling)
    samples = pass_draws(target, sampling, 3000, **opts)
    assert chi_square_pvalue(samples, law) > 1e-3


@pytest.mark.parametrize("scheme", ["two-call", "one-call"])
def test_the_law_test_has_power(tiny, monkeypatch, scheme):
    """Accepting every draft (a plausible bug) gives a law the test rejects."""
    target = tiny(vocab_size=V, seed=11, init_std=0.1)
    sampling = Sampling(1.0)
    law = exact_law(target, target.encode("w2 w3"), 3, sampling)

    def accept_all(drafts, q, p, generator):
        return len(drafts), int(tokenleap.decoding.warping.sample(p[len(drafts)], generator))

    monkeypatch.setattr(tokenleap.decoding.accept, "speculative", accept_all)
    samples = pass_draws(target, sampling, 3000, lookahead=2, embeddings="random", scheme=scheme, candidates=1)
    assert chi_square_pvalue(samples, law) < 1e-6


def test_the_law_test_catches_a_stale_law_after_rejections(tiny, monkeypatch):
    """Several guesses judged against the same law (no residual after a rejection, a plausible
    bug) favour the draft's tokens: the test rejects it."""
    target = tiny(vocab_size=V, seed=11, init_std=0.1)
    sampling = Sampling(1.0)
    law = exact_law(target, target.encode("w2 w3"), 3, sampling)

    def no_residual(draws, q, p, generator):
        for d in draws:
            if torch.rand((), generator=generator, dtype=torch.float64) < p[d] / q[d]:
                return d, p
        return None, p

    monkeypatch.setattr(tokenleap.decoding.accept, "recursive_rejection", no_residual)
    samples = pass_draws(target, sampling, 3000, lookahead=1, embeddings="random", candidates=4)
    assert chi_square_pvalue(samples, law) < 1e-6


def run_traced(model, prompt, n, sampling=Sampling(), seed=0, **opts):
    """Run `pass` through its generator directly: (blocks, forward calls before each block,
    whether each block closed a validation round, the KV cache, stats)."""
    calls = [0]
    inner = model.runner

    class Counting:
        def __getattr__(self, name):
            return getattr(inner, name)

        def forward(self, *args, **kwargs):
            calls[0] += 1
            return inner.forward(*args, **kwargs)

    counted = dataclasses.replace(model, runner=Counting())
    plan = plan_generation(prompt=prompt, method="pass", model=counted, max_new_tokens=n, seed=seed, options=opts,
                           **dataclasses.asdict(sampling))
    spec, ctx = plan.spec, plan.ctx
    caches = []
    ctx.new_cache = lambda m, **kw: caches.append(inner.new_cache(1, 8)) or caches[-1]  # small: must grow
    trace = []
    for block in spec.decode(ctx):
        rounds = ctx.stats.iterations
        trace.append((block, calls[0], rounds))
        calls[0] = 0
    return trace, caches[0], ctx


@pytest.mark.parametrize("merged", [False, True])
@pytest.mark.parametrize("sampling", [Sampling(), Sampling(1.0, top_k=20)])
def test_two_calls_and_two_to_l_plus_two_tokens_per_iteration(tiny, merged, sampling):
    scheme = "merged" if merged else "two-call"
    # Zero embeddings on this model: drafts are often all accepted, so merging skips calls.
    model = tiny(vocab_size=32, seed=0)
    L = 3
    trace, _, ctx = run_traced(model, "w2 w3 w4", 60, sampling, seed=3, lookahead=L, embeddings="zero",
                               scheme=scheme)
    iterations, cur_tokens, cur_calls, last_rounds = [], 0, 0, 0
    for block, calls, rounds in trace:
        cur_tokens += len(block)
        cur_calls += calls
        if rounds > last_rounds:  # a validation round closes an iteration
            iterations.append((cur_tokens, cur_calls))
            cur_tokens, cur_calls, last_rounds = 0, 0, rounds
    tail = (cur_tokens, cur_calls)  # plain steps at the very end (fewer than 3 tokens of room)
    assert sum(t for t, _ in iterations) + tail[0] == 60
    assert tail[0] == tail[1] <= 2
    skipped = ctx.stats.method_stats.drafting_skipped
    for tokens, calls in iterations:
        if merged:
            assert calls in (1, 2) and calls <= tokens <= L + 2
        else:
            assert calls == 2 and 2 <= tokens <= L + 2
    assert sum(c for _, c in iterations) + tail[1] == ctx.stats.target_forwards
    assert ctx.stats.method_stats.drafting_calls + skipped == ctx.stats.iterations == len(iterations)
    assert (skipped > 0) == merged == any(c == 1 for _, c in iterations)
    assert skipped <= sum(v for k, v in ctx.stats.accepted_hist.items() if k == L)
    assert ctx.stats.proposed == sum(ctx.stats.proposed_at) and ctx.stats.accepted == sum(ctx.stats.accepted_at)


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(1.0, top_k=20)])
@pytest.mark.parametrize("L,candidates", [(1, 1), (3, 1), (3, 0)])
def test_one_call_is_one_forward_per_iteration(tiny, sampling, L, candidates):
    model = tiny(vocab_size=32, seed=0)
    trace, _, ctx = run_traced(model, "w2 w3 w4", 50, sampling, seed=3, lookahead=L, embeddings="zero",
                               candidates=candidates, lookup=0)  # lookahead drafts only (lookup: below)
    assert all(calls == 1 and 1 <= len(block) <= L + 1 for block, calls, _ in trace)
    assert sum(len(b) for b, _, _ in trace) == 50 and ctx.stats.target_forwards == len(trace)
    # Every call validates drafts but the first (and the last when one token of room is left:
    # none are drafted past it), so accepted drafts are what puts more than one token in a block.
    assert ctx.stats.method_stats.drafting_calls in (1, 2)
    assert ctx.stats.iterations + ctx.stats.method_stats.drafting_calls == len(trace)
    assert ctx.stats.accepted == sum(len(b) - 1 for b, _, _ in trace) > 0
    # proposed counts every node verified; proposed_at one per depth per round: equal for chains.
    assert ctx.stats.proposed >= sum(ctx.stats.proposed_at)
    assert ctx.stats.proposed == sum(ctx.stats.proposed_at) or candidates != 1
    assert ctx.stats.accepted == sum(ctx.stats.accepted_at)


def test_one_call_candidates_verify_every_guess(tiny):
    """With every token of the vocabulary a candidate, each first guess holds the target's
    argmax: every round accepts its one draft, wherever it sits in the tree."""
    model = tiny(vocab_size=32, seed=2)
    trace, _, ctx = run_traced(model, "w2 w3", 30, Sampling(), lookahead=1, embeddings="random",
                               candidates=32, lookup=0)
    assert ctx.stats.accepted_hist == {1: ctx.stats.iterations}
    assert [t for b, _, _ in trace for t in b] == hf_greedy(model, model.encode("w2 w3"), 30)
    ranks = ctx.stats.method_stats.guess_taken
    assert "none" not in ranks and sum(ranks.values()) == ctx.stats.iterations


def test_prompt_lookup_drafts_join_the_one_call_tree(tiny, monkeypatch):
    """Greedy one-call with `lookup`: text copied from earlier in the sequence is one more branch
    of the tree (shared where it repeats a guess), verified in the same forward; the output is
    still greedy decoding, and on text that repeats the copied drafts are accepted."""
    model = dataclasses.replace(tiny(vocab_size=32, seed=0), eos_token_ids=frozenset({32}))  # no EOS: 48 tokens
    prompt = "w2 w3 w4 w5 w6 w2 w3 w4 w5 w6 w2 w3 w4"
    want = hf_greedy(model, model.encode(prompt), 48)
    trees = []
    real = pass_.drafts.add_path
    monkeypatch.setattr(pass_.drafts, "add_path", lambda tree, tokens: trees.append((tree, list(tokens)))
                        or real(tree, tokens))
    trace, _, ctx = run_traced(model, prompt, 48, Sampling(), lookahead=1, embeddings="random", lookup=6)
    assert [t for b, _, _ in trace for t in b] == want
    stats = ctx.stats.method_stats
    assert stats.lookup_proposed > 0 and 0 < stats.lookup_accepted <= sum(len(b) - 1 for b, _, _ in trace)
    for tree, copied in trees:  # every copied chain is a root-to-node path of its tree
        parent = -1
        for token in copied:
            parent = next(k for k, (t, par) in enumerate(zip(tree.tokens, tree.parents)) if t == token and par == parent)
        siblings = [(par, t) for t, par in zip(tree.tokens, tree.parents)]
        assert len(siblings) == len(set(siblings))  # no two children of a node carry the same token
    plain = tokenleap.generate(prompt, method="pass", model=model, max_new_tokens=48, lookahead=1, embeddings="random",
                               lookup=0)
    assert plain.token_ids == want and ctx.stats.iterations < plain.stats.iterations


def test_candidate_ranks_count_which_guess_was_taken(tiny, monkeypatch):
    """The per-rank counters agree with the trees: rank j is the j-th best first guess of the
    lookahead block, taken when the block that round returned starts with it."""
    model = tiny(vocab_size=32, seed=3)
    trees = []
    real = pass_.drafts.tree
    monkeypatch.setattr(pass_.drafts, "tree", lambda *a: trees.append(real(*a)) or trees[-1])
    trace, _, ctx = run_traced(model, "w4 w5 w6", 40, Sampling(), lookahead=1, embeddings="random", lookup=0)
    blocks = [b for b, _, _ in trace][1:]  # the first call has no tree
    expected: dict[str, int] = {}
    for tree, block in zip(trees, blocks):
        if tree.tokens:
            first = [t for t, parent in zip(tree.tokens, tree.parents) if parent < 0]
            key = str(first.index(block[0]) + 1) if len(block) > 1 else "none"
            expected[key] = expected.get(key, 0) + 1
    ranks = ctx.stats.method_stats.guess_taken
    assert ranks == expected and sum(ranks.values()) == ctx.stats.iterations
    assert ranks.get("none", 0) == ctx.stats.accepted_hist.get(0, 0)
    assert len(ranks) > 2  # more than one rank was taken: the test sees the ordering


@pytest.mark.parametrize("opts,sampling", [
    ({"lookahead": 3, "scheme": "two-call"}, Sampling()),
    ({"lookahead": 2, "candidates": 1, "embeddings": "random"}, Sampling(1.0)),
    ({}, Sampling(1.0)),
    ({"lookahead": 2, "candidates": 5}, Sampling()),
    ({"lookahead": 1, "candidates": 32, "embeddings": "random"}, Sampling()),
    ({"lookahead": 5, "scheme": "merged", "embeddings": "random"}, Sampling(1.0)),
    ({"lookahead": 2, "scheme": "merged"}, Sampling(0.7, top_p=0.9)),
    ({"lookahead": 1, "candidates": 2, "lookup": 6}, Sampling()),
])
def test_kv_cache_after_generation_equals_a_plain_forward(tiny, opts, sampling):
    model = tiny(vocab_size=32, seed=1)
    trace, cache, ctx = run_traced(model, "w5 w6 w7", 37, sampling, seed=1, **opts)
    committed = ctx.prompt_ids + [t for b, _, _ in trace for t in b]
    # The last token is pending (never fed); everything before it is cached, nothing else.
    assert cache.length == len(committed) - 1
    fresh = model.runner.new_cache()
    model.runner.forward(fresh, torch.tensor([committed[:-1]]))
    for got_k, got_v, ref_k, ref_v in zip(cache.keys, cache.values, fresh.keys, fresh.values):
        assert torch.allclose(got_k[:, :, : cache.length], ref_k[:, :, : fresh.length], atol=1e-5)
        assert torch.allclose(got_v[:, :, : cache.length], ref_v[:, :, : fresh.length], atol=1e-5)


def test_same_seed_same_output_and_runners_agree(tiny):
    lean, hf = tiny(vocab_size=32, seed=0, init_std=0.05), tiny(runner="hf", vocab_size=32, seed=0, init_std=0.05)
    runs = [tokenleap.generate("w2", method="pass", model=m, temperature=1.0, max_new_tokens=30, seed=s,
                               lookahead=3, scheme="merged").token_ids for m, s in ((lean, 4), (lean, 4), (hf, 4), (lean, 5))]
    assert runs[0] == runs[1] == runs[2]
    assert runs[0] != runs[3]


def test_stats_and_to_dict(tiny):
    r = tokenleap.generate("w2 w3", method="pass", model=tiny(vocab_size=32, seed=0), max_new_tokens=40,
                           lookahead=4, embeddings="random", scheme="two-call")
    s = r.stats
    d = s.to_dict()
    assert d["method_stats"]["drafting_calls"] == s.iterations and json.dumps(d)
    assert s.accepted == sum(k * v for k, v in s.accepted_hist.items())
    # Two forwards per round: mean accepted length (1 + accepted / forwards) = tokens per forward.
    plain = s.target_forwards - 2 * s.iterations
    assert s.new_tokens == 2 * s.iterations + s.accepted + plain
    assert s.draft_forwards == 0


# -- options ------------------------------------------------------------------------------------
def test_embedding_specs(tiny, tmp_path):
    model = tiny(vocab_size=32, seed=0)
    table = model.hf_model.get_input_embeddings().weight
    mean = la_artifact.lookahead_embeddings(model, "mean", 3)
    assert mean.shape == (3, 64) and torch.allclose(mean[2], table.mean(0))
    assert not la_artifact.lookahead_embeddings(model, "zero", 2).any()
    rnd = la_artifact.lookahead_embeddings(model, "random", 2)
    assert torch.equal(rnd, la_artifact.initial_embeddings(model, "random", 2)) and not torch.equal(rnd[0], rnd[1])
    # A tiny model is not a registry model: "auto" is the untrained mean init.
    assert la_artifact.artifact_for(model) is None and torch.equal(la_artifact.lookahead_embeddings(model, "auto", 3), mean)
    path = tmp_path / "la.safetensors"
    saved = torch.randn(4, 64)
    save_file({"lookahead": saved}, str(path))
    assert torch.equal(la_artifact.lookahead_embeddings(model, str(path), 3), saved[:3])
    with pytest.raises(TokenleapError, match="holds 4 lookahead embeddings"):
        la_artifact.lookahead_embeddings(model, str(path), 5)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"lookahead": torch.zeros(4, 10)}, str(wrong))
    with pytest.raises(TokenleapError, match=r"shape \[L, 64\]"):
        tokenleap.generate("w2", method="pass", model=model, max_new_tokens=5, embeddings=str(wrong))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(TokenleapError, match="cannot read"):
        tokenleap.generate("w2", method="pass", model=model, max_new_tokens=5, embeddings=str(junk))


@pytest.mark.parametrize("opts,message", [
    ({"lookahead": 0}, "lookahead must be an integer >= 1"),
    ({"lookahead": True}, "must be int"),
    ({"embeddings": "trained"}, "unknown embeddings"),
    ({"embeddings": "/no/such/la.safetensors"}, "not found"),
    ({"scheme": "one_call"}, "unknown scheme 'one_call'; use one of one-call, two-call, merged"),
    ({"scheme": 2}, "must be str"),
    ({"candidates": -1}, r"candidates must be an integer >= 0"),
    ({"candidates": 3, "scheme": "two-call"}, "candidates > 1 needs scheme one-call"),
    ({"candidates": 2, "scheme": "merged"}, "candidates > 1 needs scheme one-call"),
    ({"lookup": 4, "scheme": "two-call"}, "lookup > 0 needs scheme one-call"),
    ({"lookup": 33}, "lookup must be"),
    ({"lookup": -2}, "lookup must be"),
])
def test_bad_options_are_clear_errors(tiny, opts, message):
    with pytest.raises(TokenleapError, match=message):
        tokenleap.generate("w2", method="pass", model=tiny(vocab_size=32, seed=0), max_new_tokens=5, **opts)


def test_cli_variant_flags(tiny_dir):
    path = tiny_dir(vocab_size=32, seed=0)
    outs = {}
    for flags in (["--scheme", "merged"], ["--scheme", "two-call"], ["--scheme", "one-call", "--candidates", "3"]):
        out = subprocess.run([sys.executable, "-m", "tokenleap.cli", "generate", "w2 w3", "--model", path,
                              "--method", "pass", "--lookahead", "3", *flags, "-n", "12", "--dtype", "fp32", "--json"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        outs[flags[1]] = json.loads(out.stdout)
    assert outs["merged"]["token_ids"] == outs["two-call"]["token_ids"] == outs["one-call"]["token_ids"]
    assert outs["two-call"]["stats"]["method_stats"]["drafting_skipped"] == 0
    one = outs["one-call"]["stats"]
    assert one["target_forwards"] == one["iterations"] + one["method_stats"]["drafting_calls"]


def test_committed_embeddings_are_found_for_the_default_model(tiny):
    named = dataclasses.replace(tiny(vocab_size=32, seed=0), name=tokenleap.DEFAULT_MODEL)
    path = la_artifact.artifact_for(named)
    assert path is not None, "src/tokenleap/artifacts/smollm2-135m-pass/lookahead.safetensors is missing"
    table = la_artifact.load_embeddings(path, 576)
    assert table.shape[0] >= 2 and torch.isfinite(table).all()


@pytest.mark.real_model
def test_trained_embeddings_load_for_the_real_model(real_fp32):
    trained = la_artifact.load_embeddings(la_artifact.artifact_for(real_fp32), 576)
    auto = la_artifact.lookahead_embeddings(real_fp32, "auto", len(trained))
    assert torch.equal(auto, trained)
    assert not torch.equal(auto, la_artifact.lookahead_embeddings(real_fp32, "mean", len(trained)))
    # Asking for more than were trained: the extra ones start untrained.
    longer = la_artifact.lookahead_embeddings(real_fp32, "auto", len(trained) + 2)
    assert torch.equal(longer[: len(trained)], trained)
    assert torch.equal(longer[len(trained):], la_artifact.lookahead_embeddings(real_fp32, "mean", 2))
