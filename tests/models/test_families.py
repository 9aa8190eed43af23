"""Every method on every decoder family, through the HF runner (and the lean one where
runner="auto" picks it): greedy output equals HF `generate` token for token, the tree forward
and its cache packing are exact, sampling keeps the target's law (sps, pass) on a few
families, and models no method can run on are refused with a TokenleapError.

The tiny models (`tokenleap.models.tiny.make_tiny`) keep each family's character: sliding
windows of 8 (mistral-sw, qwen2-sw, gemma2, gemma3) under prompts and generations longer
than the window, soft-capping (gemma2), absolute position embeddings (gpt2, opt), biases
(qwen2, gpt2, opt, falcon). Prompts are token ids: AutoTokenizer loads a tiny Qwen2's
word-level tokenizer as Qwen2Tokenizer, which cannot read the words."""

import dataclasses

import pytest
import torch

import tokenleap
from tokenleap import Sampling, TokenleapError
from tokenleap.models.hf import HFRunner
from tokenleap.models.llama import LlamaRunner
from methods.laws import chi_square_pvalue, draws, exact_law  # tests/methods/laws.py
from reference import hf_greedy

pytestmark = pytest.mark.usefixtures("one_thread")

WINDOW = 8
VARIANTS = {  # id: (family, settings)
    "llama": ("llama", {}),
    "mistral": ("mistral", {}),
    "mistral-sw": ("mistral", {"sliding_window": WINDOW}),  # every layer windowed
    "qwen2": ("qwen2", {}),
    "qwen2-sw": ("qwen2", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}),
    "qwen3": ("qwen3", {}),
    "gemma2": ("gemma2", {}),  # windowed and full layers, attention and final-logit soft-capping
    "gemma3": ("gemma3", {}),  # windowed and full layers, RoPE per layer type
    "phi3": ("phi3", {}),
    "gpt2": ("gpt2", {}),
    "opt": ("opt", {}),
    "gpt_neox": ("gpt_neox", {}),
    "falcon": ("falcon", {}),
    "falcon-gqa": ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}),
}
LEAN = {"llama", "mistral", "qwen2"}  # runner="auto" takes the lean runner (checked below)
RUNS = [(v, "auto") for v in VARIANTS] + [(v, "hf") for v in VARIANTS if v in LEAN]
METHODS = {  # id: (method, options)
    "ar": ("ar", {}),
    "sps": ("sps", {"gamma": 3}),
    "mtad": ("mtad", {"gamma": 3, "beam_width": 3}),
    "mtad-tree": ("mtad-tree", {"gamma": 3, "beam_width": 3}),
    "pass-one-call": ("pass", {"scheme": "one-call", "lookahead": 3}),
    "pass-two-call": ("pass", {"scheme": "two-call", "lookahead": 3}),
    "pass-merged": ("pass", {"scheme": "merged", "lookahead": 3}),
    "pld": ("pld", {"num_draft": 3}),
    "ppd": ("ppd", {"candidates": 3}),  # per-layer access through the model's own decoder (models/layered.py)
    "ppd-one-worker": ("ppd", {"candidates": 2, "workers": 1, "exit_layer": 1}),
}
TREE_METHODS = {"mtad-tree", "pass-one-call"}
CUSTOM_MASK_METHODS = TREE_METHODS | {"ppd", "ppd-one-worker"}  # forwards with our masks and positions
VOCAB = 32
N_NEW = 24
# Longer than the window, and shorter (the window is crossed while generating).
PROMPTS = [list(range(2, 12)), [5, 9]]


def run_id(variant: str, runner: str) -> str:
    return variant if runner == "auto" else f"{variant}-{runner}"


def model(tiny_family, variant: str, runner: str = "auto", **settings) -> tokenleap.Model:
    """The variant's tiny model with EOS out of the vocabulary: every run is N_NEW tokens long,
    well past the window."""
    family, base = VARIANTS[variant]
    m = tiny_family(family, runner=runner, **base, **settings)
    return dataclasses.replace(m, eos_token_ids=frozenset({VOCAB}))


EXPECTED: dict[tuple, list[int]] = {}


def expected(target: tokenleap.Model, variant: str, prompt: list[int]) -> list[int]:
    key = (variant, tuple(prompt))  # the same weights whichever runner
    if key not in EXPECTED:
        EXPECTED[key] = hf_greedy(target, prompt, N_NEW)
        assert len(EXPECTED[key]) == N_NEW
    return EXPECTED[key]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_auto_takes_the_lean_runner_exactly_where_listed(tiny_family, variant):
    runner = model(tiny_family, variant).runner
    assert isinstance(runner, LlamaRunner if variant in LEAN else HFRunner)


@pytest.mark.parametrize("method_id", list(METHODS))
@pytest.mark.parametrize("variant,runner", RUNS, ids=[run_id(*r) for r in RUNS])
def test_greedy_equals_hf_generate(tiny_family, variant, runner, method_id):
    method, opts = METHODS[method_id]
    target = model(tiny_family, variant, runner)
    drafts = [None]
    if tokenleap.METHODS[method].needs_draft:
        # Itself (every draft accepted) and another model of the family (most rejected).
        drafts = [target, model(tiny_family, variant, runner, seed=100, num_layers=1)]
    for prompt in PROMPTS:
        want = expected(target, variant, prompt)
        for draft in drafts:
            got = tokenleap.generate(prompt, method=method, model=target, draft=draft, max_new_tokens=N_NEW, **opts)
            assert got.token_ids == want, (prompt, draft is target, got.stats.accepted_hist)


@pytest.mark.parametrize("variant,runner", RUNS, ids=[run_id(*r) for r in RUNS])
def test_self_draft_needs_no_training_on_any_family(tiny_family, variant, runner):
    """`draft="self:int8"` on every family: a quantized copy of the target (a view of its module
    where the lean runner covers the family, else a module of its own on the HF runner) drafts, the target judges, greedy
    output equals HF `generate`, the copy agrees with the target often, and it starts from the
    target's K/V of the prompt."""
    target = model(tiny_family, variant, runner)
    for method, opts in (METHODS["sps"], METHODS["mtad"]):
        rates = []
        for prompt in PROMPTS:
            got = tokenleap.generate(prompt, method=method, model=target, draft="self:int8", max_new_tokens=N_NEW,
                                     **opts)
            assert got.token_ids == expected(target, variant, prompt), (method, prompt)
            rates.append(got.stats.acceptance_rate)
            if not (variant in LEAN and runner == "hf"):  # (an HF target's cache, a lean draft's: no copy)
                # The draft took the prompt's K/V from the target: no forward of its own over it.
                drafted = [int(rows.split("x")[-1]) for rows in got.stats.forward_rows["draft"]]
                assert max(drafted) <= 2, (method, prompt, got.stats.forward_rows)
        assert sum(rates) / len(rates) > 0.3, (method, rates)  # (one prompt alone: a few rounds, noisy)
    draft = target.derived["self:int8"]
    assert (draft.hf_model is target.hf_model) == (variant in LEAN)  # the lean runner's families: a view


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tree_forward_and_packing_are_exact(tiny_family, variant):
    """Through the HF runner: two branches in one forward (tree mask, positions by depth) equal
    each branch fed alone, after a prefix longer than the window; keeping one branch packs the
    cache so that decoding goes on as if only it had been fed."""
    runner = model(tiny_family, variant, "hf").runner
    prefix = list(range(2, 13))  # 11 > WINDOW
    cache = runner.new_cache()
    runner.forward(cache, torch.tensor([prefix]))
    n = len(prefix)
    # Nodes: a=7 (depth 1), b=8 (depth 1), c=9 child of a, d=10 child of c.
    mask = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    tree = runner.forward(cache, torch.tensor([[7, 8, 9, 10]]), positions=torch.tensor([n, n, n + 1, n + 2]),
                          attn_mask=mask)
    for nodes, rows in (([7, 9, 10], [0, 2, 3]), ([8], [1])):
        alone = runner.forward(runner.new_cache(), torch.tensor([prefix + nodes]))[:, n:]
        torch.testing.assert_close(tree[:, rows], alone, atol=1e-5, rtol=1e-5)
    cache.keep_positions(n, torch.tensor([0, 2, 3]))
    assert cache.length == n + 3
    nxt = runner.forward(cache, torch.tensor([[11, 12]]))
    ref = runner.forward(runner.new_cache(), torch.tensor([prefix + [7, 9, 10, 11, 12]]))[:, -2:]
    torch.testing.assert_close(nxt, ref, atol=1e-5, rtol=1e-5)


# -- sampling: the target's law, on a soft-capped windowed family and an absolute-position one --
LAW_SAMPLING = Sampling(1.0)
LAW_PROMPT = [2, 3, 4, 5, 6, 7, 2, 3]  # the 3 tokens checked sit past the window of 8
LAW_DRAWS = 1000


@pytest.mark.parametrize("method_id", ["sps", "pass-one-call"])
@pytest.mark.parametrize("variant", ["gemma2", "gpt2"])
def test_sampling_keeps_the_target_law(tiny_family, variant, method_id):
    family, base = VARIANTS[variant]
    target = tiny_family(family, vocab_size=8, init_std=0.1, seed=11, **base)
    law = exact_law(target, LAW_PROMPT, 3, LAW_SAMPLING)
    if method_id == "sps":
        draft = tiny_family(family, vocab_size=8, init_std=0.1, seed=12, num_layers=1, **base)
        samples = draws("sps", target, draft, LAW_SAMPLING, LAW_DRAWS, prompt=LAW_PROMPT, max_new_tokens=3, gamma=2)
    else:  # 6 tokens so the first iteration drafts; the law is checked on the first 3
        samples = [s[:3] for s in draws("pass", target, None, LAW_SAMPLING, LAW_DRAWS, prompt=LAW_PROMPT,
                                        max_new_tokens=6, lookahead=2, embeddings="random")]
    assert chi_square_pvalue(samples, law) > 1e-3


# -- what no method can run on: refused with a TokenleapError naming the model type --------------
def test_a_recurrent_model_is_refused_at_load(tiny_family_dir):
    path = tiny_family_dir("mamba")
    with pytest.raises(TokenleapError, match="'mamba'.*recurrent state"):
        tokenleap.load_model(path, dtype="fp32")
    with pytest.raises(TokenleapError, match="'mamba'"):
        tokenleap.generate([2, 3], model=path, dtype="fp32", max_new_tokens=2)


def test_an_encoder_decoder_is_refused_at_load(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    from tokenleap.models.tiny import tiny_tokenizer

    config = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                      decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(tmp_path)
    tiny_tokenizer(VOCAB).save_pretrained(tmp_path)
    with pytest.raises(TokenleapError, match="'t5' is an encoder-decoder"):
        tokenleap.load_model(str(tmp_path), dtype="fp32")


@pytest.mark.parametrize("method_id", list(METHODS))
def test_alibi_falcon_runs_chains_and_refuses_trees(tiny_family, method_id):
    """ALiBi Falcon derives its position biases from a 2D padding mask, so it cannot take a
    tree's (or ppd's) mask and positions: those methods get a TokenleapError, chain methods stay exact."""
    method, opts = METHODS[method_id]
    target = dataclasses.replace(tiny_family("falcon", alibi=True), eos_token_ids=frozenset({VOCAB}))
    draft = target if tokenleap.METHODS[method].needs_draft else None
    prompt = PROMPTS[0]
    if method_id in CUSTOM_MASK_METHODS:
        with pytest.raises(TokenleapError, match="'falcon'"):
            tokenleap.generate(prompt, method=method, model=target, draft=draft, max_new_tokens=8, **opts)
    else:
        got = tokenleap.generate(prompt, method=method, model=target, draft=draft, max_new_tokens=8, **opts)
        assert got.token_ids == hf_greedy(target, prompt, 8)


def test_untrained_pass_and_ppd_run_with_a_one_line_notice(tiny_family_dir, caplog):
    """A model with no trained artifacts: pass and ppd run untrained and say so once per model,
    naming the command that trains what is missing."""
    path = tiny_family_dir("gpt2")
    target = tokenleap.load_model(path, dtype="fp32")
    with caplog.at_level("WARNING", logger="tokenleap"):
        for _ in range(2):
            for method in ("pass", "ppd"):
                tokenleap.generate(PROMPTS[1], method=method, model=target, max_new_tokens=4)
    notes = [r.getMessage() for r in caplog.records if r.name == "tokenleap"]
    assert len(notes) == 2 and all("\n" not in n for n in notes)
    assert "tokenleap train lookahead --model" in notes[0] and "shared head" in notes[1]


def test_per_layer_access_leaves_the_model_as_it_was(tiny_family):
    """ppd on the HF runner gates a copy of the decoder, not the model: its state dict and HF
    `generate` are unchanged, and a self-draft (a deep copy of the module) can be made after it."""
    target = model(tiny_family, "gpt2")
    keys = list(target.hf_model.state_dict())
    want = expected(target, "gpt2", PROMPTS[0])
    assert tokenleap.generate(PROMPTS[0], method="ppd", model=target, max_new_tokens=N_NEW).token_ids == want
    assert list(target.hf_model.state_dict()) == keys and hf_greedy(target, PROMPTS[0], N_NEW) == want
    got = tokenleap.generate(PROMPTS[0], method="sps", model=target, draft="self:int4", max_new_tokens=N_NEW, gamma=3)
    assert got.token_ids == want
