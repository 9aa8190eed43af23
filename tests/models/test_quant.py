"""Weight-only quantization: the codes stand for the weights, the kernels compute with them, a
quantized model is a target methods are exact against, and a quantized view of the target is a
draft that needs no training."""

import json

import pytest
import torch

import tokenleap
from tokenleap import METHODS, TokenleapError
from tokenleap.models.hardware import dtype_name
from tokenleap.models.kernels import linear, parse_quant, quant_activations, quantize
from tokenleap.models.loading import self_draft


@pytest.mark.parametrize("kind,group,tolerance", [("int8", 0, 0.01), ("int4", 32, 0.08), ("int4", 64, 0.08),
                                                  ("int4", 128, 0.08)])
def test_codes_round_trip_and_the_kernel_computes_with_them(kind, group, tolerance):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 256, generator=g) * 0.05
    q = quantize(w, kind, group)
    deq = q.dequantize().float()
    # int8: half a step of absmax/127 per channel; int4: half a step of (max-min)/15 per group.
    assert (deq - w).abs().max() <= tolerance * w.abs().max()
    x = torch.randn(3, 4, 256, generator=g).bfloat16()
    out = linear(x, q)
    assert out.shape == (3, 4, 96) and out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), x.float() @ deq.t(), atol=0.05, rtol=0.02)


def test_bad_quant_settings_are_clear_errors(tiny_dir):
    assert parse_quant("none") == ("none", 0) and parse_quant("INT4") == ("int4", 32)
    assert parse_quant("int4-g128") == ("int4", 128)
    for bad, message in (("int3", "unknown quantization"), ("int8-g32", "unknown quantization"),
                         ("int4-g48", "group size must be one of"), ("int4-gx", "group size must be one of")):
        with pytest.raises(TokenleapError, match=message):
            parse_quant(bad)
    with pytest.raises(TokenleapError, match="does not divide"):
        quantize(torch.randn(8, 96), "int4", 64)
    with pytest.raises(TokenleapError, match="multiple of 16"):  # PyTorch's int4 kernel's condition
        quantize(torch.randn(8, 64), "int4", 32)
    with pytest.raises(TokenleapError, match="multiple of 16"):  # an 8-token vocabulary: an LM head of 8 rows
        self_draft(tokenleap.load_model(tiny_dir(vocab_size=8, seed=0), dtype="fp32"), "int4")
    with pytest.raises(TokenleapError, match="does not divide"):  # hidden size 64: groups of 128 cannot fit
        tokenleap.load_model(tiny_dir(vocab_size=32, seed=0), quant="int4-g128")
    target = tokenleap.load_model(tiny_dir(vocab_size=32, seed=0), dtype="fp32")
    with pytest.raises(TokenleapError, match="needs a quantization"):
        self_draft(target, "none")


@pytest.mark.parametrize("quant", ["int8", "int4"])
@pytest.mark.parametrize("runner", ["lean", "hf"])
def test_quantized_model_is_a_target_methods_are_exact_against(tiny_dir, quant, runner):
    """Lossless methods on a quantized target equal greedy decoding of that quantized target."""
    target = tokenleap.load_model(tiny_dir(vocab_size=32, seed=0, hidden_size=64), quant=quant, runner=runner)
    # activations in what the kernels are fast with: fp32 for tokenleap's int8 kernel, else bf16
    assert target.dtype == quant_activations(quant, torch.device("cpu")) and target.name.endswith(f"@{quant}")
    if runner == "lean":
        assert target.runtime()["kernels"] == quant
    ar = tokenleap.generate("w2 w3 w4", model=target, max_new_tokens=16)
    assert ar.stats.kernels == (quant if runner == "lean" else "hf")
    for method in ("sps", "pass"):
        got = tokenleap.generate("w2 w3 w4", method=method, model=target, draft=target, max_new_tokens=16)
        assert got.token_ids == ar.token_ids


def test_quantized_lean_and_hf_runners_agree(tiny_dir):
    lean = tokenleap.load_model(tiny_dir(vocab_size=32, seed=0), quant="int8", runner="lean")
    hf = tokenleap.load_model(tiny_dir(vocab_size=32, seed=0), quant="int8", runner="hf")
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    a = lean.runner.forward(lean.runner.new_cache(), ids).float()
    b = hf.runner.forward(hf.runner.new_cache(), ids).float()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.8
    assert torch.allclose(a, b, atol=0.15, rtol=0.05)


@pytest.mark.parametrize("quant,min_acceptance", [("int8", 0.6), ("int4", 0.25)])
def test_self_draft_keeps_lossless_methods_exact(tiny_dir, quant, min_acceptance):
    """The target judges: with its own quantized copy as the draft, greedy sps equals greedy ar
    (fp32 target) and the draft is accepted often (it is nearly the same model; int4 less so on
    these tiny models, whose large random weights quantize coarsely)."""
    target = tokenleap.load_model(tiny_dir(vocab_size=32, seed=0), dtype="fp32")
    draft = self_draft(target, quant)
    assert draft.tokenizer is target.tokenizer and draft.dtype == quant_activations(quant, torch.device("cpu"))
    assert draft.runtime()["kernels"] == quant and target.runtime()["kernels"] in ("dense", "onednn")
    for prompt in ("w2 w3 w4", "w9 w10"):
        ar = tokenleap.generate(prompt, model=target, max_new_tokens=20)
        for method in [m for m, spec in METHODS.items() if spec.needs_draft and spec.lossless]:
            got = tokenleap.generate(prompt, method=method, model=target, draft=draft, max_new_tokens=20, gamma=4)
            assert got.token_ids == ar.token_ids
            assert got.stats.acceptance_rate > min_acceptance


def test_quant_and_self_draft_through_generate_and_the_cli(tiny_dir, capsys):
    from tokenleap.cli import main

    path = tiny_dir(vocab_size=32, seed=0)
    ar = tokenleap.generate("w2 w3", model=path, dtype="fp32", max_new_tokens=12)
    # gamma fixed: on a tiny model the int8 kernels cost more than the fp32 target, so gamma=auto
    # would rightly take plain steps.
    got = tokenleap.generate("w2 w3", method="sps", model=path, draft="self:int8", dtype="fp32", max_new_tokens=12,
                             gamma=4)
    assert got.token_ids == ar.token_ids and got.stats.accepted > 0
    quantized = tokenleap.generate("w2 w3", model=path, quant="int8", max_new_tokens=12)
    assert quantized.stats.kernels == "int8"
    assert quantized.stats.dtype == dtype_name(quant_activations("int8", torch.device("cpu")))
    assert main(["generate", "w2 w3", "--model", path, "--method", "sps", "--draft", "self:int4", "--quant", "int8",
                 "-n", "6", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["token_ids"]) == 6
    for args, message in ((["--quant", "int3"], "unknown quantization"), (["--draft", "self:int9"], "unknown quantization"),
                          (["--quant", "int4-g48"], "group size must be one of")):
        assert main(["generate", "w2 w3", "--model", path, "--method", "sps", "-n", "2", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err and err.count("\n") == 1
