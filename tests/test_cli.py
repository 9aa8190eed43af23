"""The command line: streamed text, JSON, and one-line errors with a non-zero exit."""

import json
import subprocess
import sys

import pytest


def tokenleap_cli(*args):
    return subprocess.run([sys.executable, "-m", "tokenleap.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_generate_streams_and_reports_stats(tiny_dir):
    path = tiny_dir(vocab_size=32, seed=0)
    out = tokenleap_cli("generate", "w2 w3", "--model", path, "-n", "6", "--dtype", "fp32")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.split()) == 6
    assert "tok/s" in out.stderr and "[length]" in out.stderr


def test_generate_json_with_sps(tiny_dir):
    path = tiny_dir(vocab_size=32, seed=0)
    out = tokenleap_cli("generate", "w2 w3", "--model", path, "--draft", path, "--method", "sps",
                        "--gamma", "3", "-n", "8", "--dtype", "fp32", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert len(result["token_ids"]) == 8
    assert result["stats"]["method"] == "sps" and result["stats"]["accepted"] > 0


@pytest.mark.parametrize("args", [
    ["generate", ""],
    ["generate", "w2", "-n", "0"],
    ["generate", "w2", "--temperature", "-1"],
    ["generate", "w2", "--top-p", "0"],
    ["generate", "w2", "--top-k", "-1"],
    ["generate", "w2", "--method", "sps", "--gamma", "0"],
    ["generate", "w2", "--method", "what"],
    ["generate", "w2", "--gamma", "2"],
])
def test_bad_input_exits_nonzero_without_traceback(tiny_dir, args):
    out = tokenleap_cli(*args, "--model", tiny_dir(vocab_size=32, seed=0), "--dtype", "fp32")
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr


def test_unknown_model_and_missing_file():
    for model in ("no-such-model", "/tmp/definitely-missing.gguf"):
        out = tokenleap_cli("generate", "hi", "--model", model)
        assert out.returncode == 2 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr
