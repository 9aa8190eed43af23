"""`tokenleap serve` as a user runs it: a subprocess on a free loopback port."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from openai import OpenAI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command(tiny_dir):
    target, draft = tiny_dir(vocab_size=32, seed=0), tiny_dir(vocab_size=32, seed=0, num_layers=1)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tokenleap.cli", "serve", "--model", target, "--draft", draft,
                             "--port", str(port), "--dtype", "fp32", "--method", "sps", "--queue-size", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        health = httpx.get(url + "/health").json()
        assert health["default_method"] == "sps"
        assert (health["device"], health["dtype"]) == ("cpu", "fp32") and health["kernels"] in ("dense", "onednn")
        with OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
            out = client.chat.completions.create(model=target, messages=[{"role": "user", "content": "w3 w4"}],
                                                 max_tokens=5, temperature=0)
        assert out.usage.completion_tokens <= 5
        assert out.model_extra["tokenleap"]["method"] == "sps"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def test_serve_on_a_missing_device_is_a_one_line_error(tiny_dir):
    import torch

    if torch.cuda.device_count() > 3:
        pytest.skip("this machine has the device")
    out = subprocess.run([sys.executable, "-m", "tokenleap.cli", "serve", "--model", tiny_dir(vocab_size=32, seed=0),
                          "--device", "cuda:3"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith("error: device 'cuda:3'")

