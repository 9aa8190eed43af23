import json

import pytest

import tokenleap
from tokenleap import TokenleapError
from tokenleap.models.llama import LlamaRunner


def test_unknown_name_and_missing_files(tmp_path):
    with pytest.raises(TokenleapError, match="unknown model"):
        tokenleap.load_model("no-such-model")
    with pytest.raises(TokenleapError, match="GGUF file not found"):
        tokenleap.load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(TokenleapError, match="no config.json"):
        tokenleap.load_model(str(tmp_path))
    with pytest.raises(TokenleapError, match="unknown model"):
        tokenleap.load_model(str(tmp_path / "nothing-here"))
    with pytest.raises(TokenleapError, match="unknown dtype"):
        tokenleap.load_model(str(tmp_path), dtype="int3")


def test_bad_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(TokenleapError, match="cannot load model"):
        tokenleap.load_model(str(tmp_path))


def test_tiny_model_loads_with_lean_runner(tiny):
    model = tiny(vocab_size=32, seed=0)
    assert isinstance(model.runner, LlamaRunner)
    assert model.encode("w2 w3") == [2, 3]
    assert model.decode([2, 3]) == "w2 w3"
    assert model.eos_token_ids == {1}


@pytest.mark.real_model
def test_default_model_from_registry(real_fp32):
    cfg = real_fp32.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert isinstance(real_fp32.runner, LlamaRunner)
    ids = real_fp32.encode("Hello")
    assert ids[0] == real_fp32.tokenizer.convert_tokens_to_ids("<|im_start|>")  # chat template applied
    assert real_fp32.encode("Hello", chat=False) == real_fp32.tokenizer("Hello")["input_ids"]


@pytest.mark.real_model
def test_default_model_loads_in_the_auto_dtype_and_is_cached():
    import time

    import torch

    from tokenleap.models.hardware import cpu_caps

    start = time.perf_counter()
    model = tokenleap.load_model(tokenleap.DEFAULT_MODEL)  # conversion (and kernel choice) cached by now
    assert time.perf_counter() - start < 30
    # bf16 only where this CPU computes it natively; fp32 elsewhere (and under TOKENLEAP_NO_NATIVE_BF16).
    assert model.dtype == (torch.bfloat16 if cpu_caps().native_bf16 else torch.float32)
    assert model.runtime() == {"device": "cpu", "dtype": "bf16" if cpu_caps().native_bf16 else "fp32",
                               "kernels": model.runner.layout}
