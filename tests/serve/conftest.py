"""Fixtures: a real uvicorn server on 127.0.0.1 (a background thread, a free port) over tiny random models."""

from __future__ import annotations

import dataclasses

import httpx
import pytest
from serve_helpers import SlowRunner, running_server

import tokenleap
from tokenleap.serve import create_app


@pytest.fixture(scope="session")
def serve_models(tiny_dir):
    """Target, and a draft with the same vocabulary (same seed, one layer: it agrees often, not always)."""
    target = tokenleap.load_model(tiny_dir(vocab_size=32, seed=0), dtype="fp32")
    draft = tokenleap.load_model(tiny_dir(vocab_size=32, seed=0, num_layers=1), dtype="fp32")
    return target, draft


@pytest.fixture(scope="session")
def server_url(serve_models):
    target, draft = serve_models
    with running_server(create_app(target, draft, default_method="ar", queue_size=8)) as url:
        yield url


@pytest.fixture(scope="session")
def slow_server_url(tiny_dir, serve_models):
    """Queue size 1, 20 ms per forward and no EOS: a 200-token generation takes about 4 s.
    Its own target instance: the two servers' workers may run at the same time."""
    draft = serve_models[1]
    target = tokenleap.load_model(tiny_dir(vocab_size=32, seed=0), dtype="fp32")
    slow = dataclasses.replace(target, runner=SlowRunner(target.runner, 0.02), eos_token_ids=frozenset())
    with running_server(create_app(slow, draft, default_method="ar", queue_size=1)) as url:
        yield url


@pytest.fixture
def http(server_url):
    with httpx.Client(base_url=server_url, timeout=30) as client:
        yield client
