"""The target law on the real default model, statistically: whole sampled generations of the
lossless methods must look drawn from the target's warped law, token by token.

Each generated token's randomised PIT under the target (`law_pit`) is U(0, 1) exactly when the
token came from that law given its prefix, so a Kolmogorov-Smirnov test over all tokens of many
generations checks every round of a method, rollbacks and bonus tokens included, which the
exact-law tests on tiny models (first tokens, enumerable vocabularies) cannot reach. A colder
sampler judged against the same law is the power check: the test can fail."""

from __future__ import annotations

import pytest
import torch

import tokenleap
from tokenleap import Sampling
from tokenleap.decoding.quality import law_pit, uniformity_pvalue

pytestmark = pytest.mark.real_model

LAW = dict(temperature=1.0, top_k=10, top_p=0.9)  # the MTAD claims setting
PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how vaccines work.",
           "Give me three tips for learning a language.", "What causes the seasons on Earth?",
           "Describe a busy market in the morning.", "How do I make a good cup of tea?"]


@pytest.fixture(scope="module")
def draft_fp32():
    return tokenleap.load_model("smollm2-135m-draft", dtype="fp32")


def law_pvalue(target, draft, method: str, temperature: float = 1.0, **options) -> tuple[float, float]:
    sampling = Sampling(**LAW)
    u = []
    for i, prompt in enumerate(PROMPTS):
        for seed in range(3):
            r = tokenleap.generate(prompt, model=target, draft=draft, method=method, max_new_tokens=48,
                                   seed=100 * i + seed, **{**LAW, "temperature": temperature}, **options)
            # Uniforms for the PIT from their own stream, independent of the method's draws.
            u += law_pit(target, r.prompt_ids, r.token_ids, sampling,
                         torch.Generator().manual_seed(7_000_000 + 100 * i + seed)).tolist()
    return uniformity_pvalue(u)


@pytest.mark.parametrize("method,options", [("sps", {"gamma": 4}), ("pass", {"lookahead": 2})])
def test_lossless_methods_keep_the_target_law_over_whole_generations(real_fp32, draft_fp32, method, options):
    p, outside = law_pvalue(real_fp32, draft_fp32, method, **options)
    assert outside < 0.005  # fp32: decoding and scoring agree on the top-k/top-p support
    assert p > 1e-3, f"{method}: tokens do not follow the target law (KS p = {p:.2g})"


def test_the_check_rejects_a_colder_sampler(real_fp32, draft_fp32):
    p, _ = law_pvalue(real_fp32, draft_fp32, "ar", temperature=0.7)
    assert p < 1e-3
