"""Helpers for the serve tests: a real uvicorn server in a thread, a slow runner, metrics."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import httpx
import uvicorn

from tokenleap.serve.metrics import parse_metrics

# Options for methods that need some to run on the tiny models; other methods use their defaults.
# A fixed gamma: with auto, a draft that cannot pay on this machine's costs rightly gives plain
# steps, and these tests check the acceptance figures of judged drafts (auto: tests/decoding).
METHOD_OPTIONS = {"sps": {"gamma": 3}, "mtad": {"gamma": 3}, "mtad-tree": {"gamma": 3}}


@contextmanager
def running_server(app):
    """Serve `app` with uvicorn on a free loopback port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class SlowRunner:
    """A runner that sleeps before each forward: generations last long enough to interrupt."""

    def __init__(self, inner, delay: float) -> None:
        self._inner = inner
        self._delay = delay

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def forward(self, *args, **kwargs):
        time.sleep(self._delay)
        return self._inner.forward(*args, **kwargs)


def metrics(client: httpx.Client) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return parse_metrics(response.text)


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
