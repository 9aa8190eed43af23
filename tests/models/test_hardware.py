"""The runtime adapts to the machine: capabilities, auto dtype and device, measured kernel choice,
and the forced "no native bf16" path that AVX2-only CPUs take (tested here on every machine)."""

import json
import logging

import pytest
import torch

import tokenleap
from tokenleap import METHODS, TokenleapError
from tokenleap.models import hardware, kernels
from tokenleap.models.hardware import FORCE_FALLBACK_ENV, auto_dtype, cpu_caps, resolve_device, resolve_dtype
from reference import hf_greedy

CPU = torch.device("cpu")


@pytest.fixture
def fallback(monkeypatch):
    """This process behaves as on a CPU without native bf16 for the test's duration."""
    monkeypatch.setenv(FORCE_FALLBACK_ENV, "1")
    yield cpu_caps()


def test_forced_fallback_reports_no_bf16_and_auto_picks_fp32(fallback):
    assert fallback.forced_fallback and not fallback.native_bf16 and not fallback.onednn_bf16
    assert auto_dtype(CPU) == torch.float32 and resolve_dtype("auto", CPU) == torch.float32
    assert kernels.available_layouts(torch.bfloat16, CPU) == ["dense"]
    assert kernels.available_layouts(torch.float32, CPU) == (["dense", "onednn"] if fallback.onednn else ["dense"])


@pytest.mark.skipif(not cpu_caps().native_bf16, reason="this CPU has no native bf16 (or TOKENLEAP_NO_NATIVE_BF16 is set)")
def test_native_bf16_cpu_picks_bf16_and_may_pack_it():
    assert auto_dtype(CPU) == torch.bfloat16
    assert kernels.available_layouts(torch.bfloat16, CPU) == ["dense", "onednn"]


def test_capabilities_are_detected_once_per_setting(monkeypatch):
    monkeypatch.delenv(FORCE_FALLBACK_ENV, raising=False)
    assert cpu_caps() is cpu_caps()
    assert cpu_caps().isa == torch.backends.cpu.get_cpu_capability()
    monkeypatch.setenv(FORCE_FALLBACK_ENV, "0")  # "0" means off
    assert not cpu_caps().forced_fallback


def test_explicit_bf16_without_native_bf16_runs_and_says_why(fallback, tiny_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="tokenleap"):
        model = tokenleap.load_model(tiny_dir(vocab_size=32, seed=0), dtype="bf16")
    assert "no native bf16" in caplog.text
    assert model.dtype == torch.bfloat16 and model.runner.layout == "dense"
    result = tokenleap.generate("w2 w3", model=model, max_new_tokens=4)
    assert len(result.token_ids) == 4 and result.stats.dtype == "bf16" and result.stats.kernels == "dense"


def test_bad_dtype_device_and_layout_are_clear_errors(tiny_dir):
    with pytest.raises(TokenleapError, match="unknown dtype 'int3'"):
        resolve_dtype("int3", CPU)
    with pytest.raises(TokenleapError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(TokenleapError, match="no CUDA device is available"):
            resolve_device("cuda:0")
    if not hardware._mps_available():
        with pytest.raises(TokenleapError, match="'mps' requested"):
            resolve_device("mps")
    assert resolve_device("CPU") == CPU and resolve_device(None).type in ("cpu", "cuda", "mps")
    with pytest.raises(TokenleapError, match="kernel layout 'onednn' does not run here for fp16"):
        tokenleap.load_model(tiny_dir(vocab_size=32, seed=0), dtype="fp16", kernels_layout="onednn")


def test_kernel_choice_is_measured_once_then_cached(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENLEAP_HOME", str(tmp_path))
    path = tiny_dir(vocab_size=32, seed=0)
    first = tokenleap.load_model(path, dtype="fp32")
    layouts = kernels.available_layouts(torch.float32, CPU)
    if len(layouts) == 1:
        pytest.skip("one layout only: nothing to choose")
    assert first.kernels["measured"] and not first.kernels["cached"]
    assert set(first.kernels["ms"]) == set(layouts) and first.runner.layout == first.kernels["layout"]
    saved = json.loads((tmp_path / "kernels.json").read_text())
    assert [v["layout"] for v in saved.values()] == [first.runner.layout]
    second = tokenleap.load_model(path, dtype="fp32")
    assert second.kernels["cached"] and second.runner.layout == first.runner.layout
    # Another thread count is another machine as far as the choice goes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        assert not tokenleap.load_model(path, dtype="fp32").kernels["cached"]
    finally:
        torch.set_num_threads(threads)
    assert len(json.loads((tmp_path / "kernels.json").read_text())) == 2


LOSSLESS = [name for name, spec in METHODS.items() if spec.lossless]


@pytest.mark.parametrize("layout", ["dense", "onednn"])
@pytest.mark.parametrize("method", LOSSLESS)
def test_lossless_methods_equal_greedy_with_every_layout(tiny_dir, layout, method):
    """Whatever layout the kernel choice picks, greedy sps, pass, ppd (...) still equal greedy decoding."""
    if layout not in kernels.available_layouts(torch.float32, CPU):
        pytest.skip(f"layout {layout} does not run here")
    target = tokenleap.load_model(tiny_dir(vocab_size=32, seed=0), dtype="fp32", kernels_layout=layout)
    draft = tokenleap.load_model(tiny_dir(vocab_size=32, seed=100, num_layers=1), dtype="fp32", kernels_layout=layout)
    for prompt in ("w2 w3 w4", "w7 w8 w9 w10 w11"):
        expected = hf_greedy(target, target.encode(prompt), 20)
        got = tokenleap.generate(prompt, method=method, model=target,
                                 draft=draft if METHODS[method].needs_draft else None, max_new_tokens=20)
        assert got.token_ids == expected
        assert got.stats.kernels == layout and got.stats.dtype == "fp32" and got.stats.device == "cpu"


def test_env_json_reports_versions_choices_and_the_cost_curve(tiny_dir, capsys):
    from tokenleap.cli import main

    assert main(["env", "--model", tiny_dir(vocab_size=32, seed=0), "--json", "--context", "16"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["versions"]) == {"python", "torch", "transformers", "tokenleap"}
    assert info["dtype"] == info["auto_dtype"] == hardware.dtype_name(auto_dtype(CPU))
    assert info["device"] == "cpu" and info["kernels"] in kernels.LAYOUTS
    assert list(info["forward_ms"]) == ["1", "2", "4", "8", "16"]
    assert all(ms > 0 for ms in info["forward_ms"].values()) and info["forward_ratio"]["1"] == 1.0
    assert info["cpu"]["isa"] == torch.backends.cpu.get_cpu_capability()


def test_env_without_a_model_and_its_errors(capsys):
    from tokenleap.cli import main

    assert main(["env", "--model", "none"]) == 0
    out = capsys.readouterr().out
    assert "auto dtype:" in out and "native bf16:" in out and "forward" not in out
    assert main(["env", "--model", "none", "--device", "tpu"]) == 2
    assert "unknown device" in capsys.readouterr().err


def test_env_shows_what_auto_chooses_here_and_on_another_curve(tiny_dir, capsys):
    from tokenleap.cli import main

    args = ["env", "--model", tiny_dir(vocab_size=32, seed=0), "--draft", tiny_dir(vocab_size=32, seed=100, num_layers=1),
            "--context", "16", "--what-if", "1=35,8=44"]
    assert main(args + ["--json"]) == 0
    choices = json.loads(capsys.readouterr().out)["auto_choices"]
    assert choices["what_if"]["curve"] == {"1": 35.0, "8": 44.0}
    for where in ("here", "what_if"):
        c = choices[where]
        assert [row["alpha"] for row in c["sps"]] == [0.3, 0.5, 0.7, 0.9]
        for method in ("sps", "mtad", "mtad-tree"):
            speedups = [row["speedup"] for row in c[method]]
            assert speedups == sorted(speedups) and min(speedups) >= 1.0  # never below plain steps
            assert all(row["gamma"] == 0 or row["gamma"] >= (2 if method != "sps" else 1) for row in c[method])
        assert c["ppd"]["exit_layer"] >= 1
    # On the what-if curve the draft costs what it costs here relative to a target step.
    assert choices["what_if"]["draft_ratio"] == pytest.approx(choices["here"]["draft_ratio"], rel=0.01)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "auto choices, this machine" in out and "auto choices, what if (step cost: 1 row 35 ms, 8 rows 44 ms)" in out
    for bad in ("1=35", "8=44,16=50", "1=x,8=44", "1=-3,8=4"):
        assert main(args[:-1] + [bad]) == 2
        assert "--what-if" in capsys.readouterr().err
