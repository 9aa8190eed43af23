"""The lean runner must compute what the model's own transformers forward computes."""

import pytest
import torch

import tokenleap
from tokenleap.models.hf import HFRunner
from tokenleap.models.hardware import cpu_caps
from tokenleap.models.kernels import linear, pack

SHAPES = [dict(vocab_size=32, seed=0), dict(vocab_size=40, seed=1, num_kv_heads=4, tie_word_embeddings=True)]


@pytest.mark.parametrize("kwargs", SHAPES)
def test_lean_forward_matches_hf_forward(tiny, kwargs):
    model = tiny(**kwargs)
    ids = torch.randint(0, kwargs["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref = model.hf_model(ids).logits
    lean = model.runner.forward(model.runner.new_cache(1, 4), ids)  # capacity 4: must grow
    assert torch.allclose(lean, ref, atol=1e-5)


@pytest.mark.parametrize("runner_kind", ["lean", "hf"])
def test_incremental_rollback_and_refeed_match_full_forward(tiny, runner_kind):
    model = tiny(runner=runner_kind, vocab_size=32, seed=0)
    runner = model.runner
    ids = torch.randint(0, 32, (1, 10), generator=torch.Generator().manual_seed(4))
    full = runner.forward(runner.new_cache(), ids)
    cache = runner.new_cache()
    parts = [runner.forward(cache, ids[:, :6]), runner.forward(cache, ids[:, 6:8])]
    # A wrong guess is fed, then rolled back: the cache must forget it.
    runner.forward(cache, torch.tensor([[5, 6, 7]]))
    cache.rollback(8)
    parts.append(runner.forward(cache, ids[:, 8:]))
    assert cache.length == 10
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


@pytest.mark.parametrize("runner_kind", ["lean", "hf"])
def test_tree_mask_equals_separate_branches(tiny, runner_kind):
    """Two branches verified in one forward with a tree mask = each branch fed on its own."""
    model = tiny(runner=runner_kind, vocab_size=32, seed=0)
    runner = model.runner
    prefix = torch.tensor([[3, 4, 5]])
    cache = runner.new_cache()
    runner.forward(cache, prefix)
    # Nodes: a=7 (depth 0), b=8 (depth 0), c=9 child of a. Positions follow depth.
    mask = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 1]], dtype=torch.bool)
    tree = runner.forward(cache, torch.tensor([[7, 8, 9]]), positions=torch.tensor([3, 3, 4]), attn_mask=mask)
    for nodes, rows in (([7, 9], [0, 2]), ([8], [1])):
        c = runner.new_cache()
        ref = runner.forward(c, torch.cat([prefix, torch.tensor([nodes])], 1))[:, 3:]
        assert torch.allclose(tree[:, rows], ref, atol=1e-5)
    # Keeping the a->c path packs its K/V so decoding continues as if only that path was fed.
    cache.keep_positions(3, torch.tensor([0, 2]))
    nxt = runner.forward(cache, torch.tensor([[11]]))
    ref = runner.forward(runner.new_cache(), torch.tensor([[3, 4, 5, 7, 9, 11]]))[:, -1:]
    assert torch.allclose(nxt, ref, atol=1e-5)
    # Keeping a prefix of what was fed ([7, 9, 11] -> [7]) is a rollback.
    cache.keep_positions(3, torch.tensor([0]))
    assert cache.length == 4
    nxt = runner.forward(cache, torch.tensor([[12]]))
    ref = runner.forward(runner.new_cache(), torch.tensor([[3, 4, 5, 7, 12]]))[:, -1:]
    assert torch.allclose(nxt, ref, atol=1e-5)


def test_hf_runner_is_used_when_asked(tiny):
    assert isinstance(tiny(runner="hf", vocab_size=32, seed=0).runner, HFRunner)


def test_reduced_head_gives_minus_inf_outside_the_subset(tiny):
    from tokenleap.models.llama import LlamaRunner

    model = tiny(vocab_size=32, seed=0)
    subset = [1, 4, 9, 30]
    reduced = LlamaRunner(model.hf_model, subset)
    ids = torch.tensor([[3, 4, 5]])
    full = model.runner.forward(model.runner.new_cache(), ids)
    part = reduced.forward(reduced.new_cache(), ids)
    assert torch.allclose(part[..., subset], full[..., subset], atol=1e-5)
    outside = torch.ones(32, dtype=torch.bool)
    outside[subset] = False
    assert torch.isinf(part[..., outside]).all()


needs_onednn_bf16 = pytest.mark.skipif(not cpu_caps().onednn_bf16,
                                       reason="this CPU has no oneDNN bf16 kernels (needs AVX-512 or AVX-NE-CONVERT), "
                                              "or TOKENLEAP_NO_NATIVE_BF16 is set")


@needs_onednn_bf16
@pytest.mark.parametrize("shape", [(1, 1, 64), (1, 7, 64), (3, 5, 64)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_packed_bf16_linear_is_bit_identical_to_f_linear(shape, with_bias):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 64, generator=g).bfloat16()
    b = torch.randn(96, generator=g).bfloat16() if with_bias else None
    x = torch.randn(*shape, generator=g).bfloat16()
    packed = pack(w, "onednn")
    assert packed.is_mkldnn
    assert torch.equal(linear(x, packed, b), torch.nn.functional.linear(x, w, b))


@pytest.mark.skipif(not cpu_caps().onednn, reason="torch is built without oneDNN")
@pytest.mark.parametrize("with_bias", [False, True])
def test_packed_fp32_linear_is_close_to_f_linear(with_bias):
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(96, 64, generator=g), torch.randn(3, 5, 64, generator=g)
    b = torch.randn(96, generator=g) if with_bias else None
    assert torch.allclose(linear(x, pack(w, "onednn"), b), torch.nn.functional.linear(x, w, b), atol=1e-5)


@pytest.mark.parametrize("layout", ["dense", "onednn"])
@pytest.mark.parametrize("kwargs", SHAPES)
def test_every_fp32_layout_matches_hf_forward(tiny_dir, layout, kwargs):
    """Each layout the kernel choice may pick computes the model's own forward."""
    if layout == "onednn" and not cpu_caps().onednn:
        pytest.skip("torch is built without oneDNN")
    model = tokenleap.load_model(tiny_dir(**kwargs), dtype="fp32", kernels_layout=layout)
    assert model.runner.layout == layout and model.runtime()["kernels"] == layout
    assert model.runner.layers[0].qkv_w.is_mkldnn == (layout == "onednn")
    ids = torch.randint(0, kwargs["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref = model.hf_model(ids).logits
    assert torch.allclose(model.runner.forward(model.runner.new_cache(1, 4), ids), ref, atol=1e-5)


@pytest.mark.parametrize("layout", ["dense", "onednn"])
def test_bf16_lean_forward_matches_hf_forward(tiny_dir, layout):
    """bf16 runs with every layout this CPU offers: dense anywhere (emulated without native bf16,
    slowly, but it runs), oneDNN-packed where oneDNN has bf16 kernels."""
    if layout == "onednn" and not cpu_caps().onednn_bf16:
        pytest.skip("this CPU has no oneDNN bf16 kernels (or TOKENLEAP_NO_NATIVE_BF16 is set)")
    model = tokenleap.load_model(tiny_dir(vocab_size=32, seed=0), dtype="bf16", kernels_layout=layout)
    assert model.runner.layers[0].gate_up_w.is_mkldnn == (layout == "onednn")
    ids = torch.randint(0, 32, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref = model.hf_model(ids).logits.float()
    lean = model.runner.forward(model.runner.new_cache(1, 16), ids).float()
    assert (lean.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    assert torch.allclose(lean, ref, atol=0.1, rtol=0.05)
