#!/usr/bin/env python3
"""A bounded load test for a running `tokenleap serve` (loopback only).

Sends a fixed number of concurrent requests of mixed kinds (completions and chat, streamed and
not, every method the server lists, greedy and sampled) and reports requests/s, p50/p99
latency, errors by status, and the server's resident memory before and after.

    tokenleap serve --model DIR --draft DIR --port 8000 &
    python scripts/load_test.py --url http://127.0.0.1:8000 --requests 200 --concurrency 8 \
        --server-pid $!

Only 127.0.0.1, localhost and ::1 are accepted: this is a test of our own server, not a tool
to load anything else. The run stops at --requests or --max-duration, whichever comes first.
429s (queue full) are expected under load and counted apart (a worker backs off 50-250 ms
after one); the exit status is 1 when any other error happened.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

from tokenleap.serve.metrics import parse_metrics, resident_memory_bytes

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PROMPTS = ["w3 w4 w5 w6", "Write one sentence about the sea.", "w7 w8 w9", "List three colours."]
METHOD_OPTIONS = {"sps": lambda rng: {"gamma": rng.randint(1, 5)}}


class Target:
    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise SystemExit(f"error: only http:// URLs, got {url!r}")
        if parts.hostname not in LOOPBACK:
            raise SystemExit(f"error: refusing host {parts.hostname!r}: this script only loads a server on "
                             f"{', '.join(sorted(LOOPBACK))}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def metrics(self) -> dict[str, float]:
        status, raw = self.request("GET", "/metrics")
        return parse_metrics(raw.decode()) if status == 200 else {}


def make_request(rng: random.Random, model: str, methods: list[str], max_tokens: int) -> tuple[str, dict, str]:
    method = rng.choice(methods)
    block = {"method": method, **METHOD_OPTIONS.get(method, lambda r: {})(rng)}
    body: dict = {"model": model, "max_tokens": rng.randint(1, max_tokens), "stream": rng.random() < 0.5,
                  "temperature": rng.choice([0.0, 0.8]), "seed": rng.randrange(1 << 31), "tokenleap": block}
    prompt = rng.choice(PROMPTS)
    if rng.random() < 0.5:
        body["prompt"] = prompt
        return "/v1/completions", body, method
    body["messages"] = [{"role": "user", "content": prompt}]
    return "/v1/chat/completions", body, method


def check_body(status: int, raw: bytes, stream: bool) -> str:
    """'ok', or why a 200 answer is still wrong."""
    if status != 200:
        return "ok"
    text = raw.decode(errors="replace")
    if stream:
        events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            return "stream without [DONE]"
        if any('"error"' in e[:10] for e in events[:-1]):
            return "error event in stream"
        return "ok"
    try:
        parsed = json.loads(text)
    except ValueError:
        return "invalid JSON body"
    return "ok" if parsed.get("choices") and "usage" in parsed else "body without choices/usage"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=100, help="requests to send in all (at most 10000)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (at most 64)")
    parser.add_argument("--max-duration", type=float, default=60.0, help="stop sending after this many seconds")
    parser.add_argument("--max-tokens", type=int, default=16, help="each request asks for 1..this many tokens")
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: all the server has)")
    parser.add_argument("--server-pid", type=int, default=None, help="read the server's RSS from /proc/PID")
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request timeout in seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 10_000 or not 1 <= args.concurrency <= 64 or args.max_duration <= 0:
        parser.error("--requests must be 1..10000, --concurrency 1..64, --max-duration > 0")

    target = Target(args.url, args.timeout)
    status, raw = target.request("GET", "/v1/models")
    if status != 200:
        print(f"error: GET /v1/models answered {status}", file=sys.stderr)
        return 2
    entry = json.loads(raw)["data"][0]
    model = entry["id"]
    methods = args.methods.split(",") if args.methods else entry.get("tokenleap", {}).get("methods", ["ar"])
    if not (entry.get("tokenleap") or {}).get("draft"):
        methods = [m for m in methods if m != "sps"] or ["ar"]

    def rss() -> int | None:
        if args.server_pid:
            return resident_memory_bytes(args.server_pid)
        value = target.metrics().get("process_resident_memory_bytes")
        return int(value) if value is not None else None

    rss_before = rss()
    metrics_before = target.metrics()
    lock = threading.Lock()
    next_index = 0
    results: list[tuple[str, int | str, float, str]] = []  # (method, status or error, seconds, body check)
    start = time.perf_counter()
    deadline = start + args.max_duration

    def worker(worker_id: int) -> None:
        nonlocal next_index
        rng = random.Random(args.seed * 1000 + worker_id)
        while True:
            with lock:
                if next_index >= args.requests or time.perf_counter() >= deadline:
                    return
                next_index += 1
            path, body, method = make_request(rng, model, methods, args.max_tokens)
            t0 = time.perf_counter()
            try:
                status, raw = target.request("POST", path, body)
                outcome: int | str = status
                check = check_body(status, raw, body["stream"])
            except (OSError, http.client.HTTPException) as exc:
                outcome, check = f"transport:{type(exc).__name__}", "ok"
            with lock:
                results.append((method, outcome, time.perf_counter() - t0, check))
            if outcome == 429:
                time.sleep(rng.uniform(0.05, 0.25))  # back off as a polite client would

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    rss_after = rss()
    metrics_after = target.metrics()

    by_status = Counter(str(r[1]) for r in results)
    bad_bodies = Counter(r[3] for r in results if r[3] != "ok")
    ok_latencies = sorted(r[2] for r in results if r[1] == 200)

    def pct(q: float) -> float | None:
        if not ok_latencies:
            return None
        return ok_latencies[min(len(ok_latencies) - 1, int(q * len(ok_latencies)))]

    generated = sum(v - metrics_before.get(k, 0.0) for k, v in metrics_after.items()
                    if k.startswith("tokenleap_generated_tokens_total"))
    non_429 = sum(n for s, n in by_status.items() if s not in ("200", "429")) + sum(bad_bodies.values())
    report = {
        "url": args.url, "model": model, "methods": methods, "requests_sent": len(results),
        "concurrency": args.concurrency, "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(len(results) / elapsed, 2) if elapsed else None,
        "ok": by_status.get("200", 0), "rejected_429": by_status.get("429", 0),
        "errors_by_status": {s: n for s, n in sorted(by_status.items()) if s != "200"},
        "bad_200_bodies": dict(bad_bodies), "non_429_errors": non_429,
        "latency_p50_s": pct(0.50), "latency_p99_s": pct(0.99),
        "latency_mean_s": statistics.fmean(ok_latencies) if ok_latencies else None,
        "server_generated_tokens": generated, "server_tokens_per_s": round(generated / elapsed, 1) if elapsed else None,
        "server_rss_before_mb": round(rss_before / 2**20, 1) if rss_before else None,
        "server_rss_after_mb": round(rss_after / 2**20, 1) if rss_after else None,
        "stopped_by": "max-duration" if len(results) < args.requests else "request count",
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            if isinstance(value, float):
                value = f"{value:.4f}" if key.startswith("latency") else value
            print(f"{key:24s} {value}")
    return 1 if non_429 else 0


if __name__ == "__main__":
    sys.exit(main())
