"""Server metrics in the Prometheus text exposition format (version 0.0.4), written by hand.

Everything here is thread-safe: the event loop records requests, the worker thread records
generations."""

from __future__ import annotations

import threading
import time
from typing import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Request latency buckets in seconds: a tiny model answers in milliseconds, a long
# generation on CPU takes minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: Iterable[tuple[str, str]] = ()) -> str:
    pairs = list(labels) + list(extra)
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))


class _Metric:
    def __init__(self, name: str, help_text: str, kind: str) -> None:
        self.name, self.help, self.kind = name, help_text, kind

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text, "counter")
        self.values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)

    def lines(self) -> list[str]:
        return self.header() + [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(self.values.items())]


class Histogram(_Metric):
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_text, "histogram")
        self.buckets = buckets
        self.series: dict[Labels, list[float]] = {}  # bucket counts..., then sum, then count

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        row = self.series.setdefault(key, [0.0] * (len(self.buckets) + 2))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                row[i] += 1
        row[-2] += value
        row[-1] += 1

    def lines(self) -> list[str]:
        out = self.header()
        for key, row in sorted(self.series.items()):
            for bound, count in zip(self.buckets, row):
                out.append(f"{self.name}_bucket{_labels(key, [('le', _number(bound))])} {_number(count)}")
            out.append(f"{self.name}_bucket{_labels(key, [('le', '+Inf')])} {_number(row[-1])}")
            out.append(f"{self.name}_sum{_labels(key)} {_number(row[-2])}")
            out.append(f"{self.name}_count{_labels(key)} {_number(row[-1])}")
        return out


def resident_memory_bytes(pid: int | str = "self") -> int | None:
    """VmRSS of a process from /proc (Linux); None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class ServerMetrics:
    """All metrics of one server. `render()` gives the /metrics body."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.start_time = time.time()
        self.requests = Counter("tokenleap_requests_total",
                                "HTTP requests answered, by endpoint, decoding method and status code.")
        self.latency = Histogram("tokenleap_request_duration_seconds",
                                 "Time from receiving a request to its last byte, by endpoint.")
        self.first_token = Histogram("tokenleap_time_to_first_token_seconds",
                                     "Time from receiving a generation request to its first streamed text.")
        self.prompt_tokens = Counter("tokenleap_prompt_tokens_total", "Prompt tokens processed, by method.")
        self.generated = Counter("tokenleap_generated_tokens_total", "Tokens generated, by method.")
        self.proposed = Counter("tokenleap_draft_tokens_proposed_total",
                                "Draft tokens put to the target for verification, by method.")
        self.accepted = Counter("tokenleap_draft_tokens_accepted_total",
                                "Draft tokens the target accepted, by method.")
        self.target_forwards = Counter("tokenleap_target_forwards_total", "Target model forward passes, by method.")
        self.cancelled = Counter("tokenleap_generations_cancelled_total",
                                 "Generations stopped because their client went away, by method.")
        self.rejected = Counter("tokenleap_queue_rejections_total",
                                "Requests refused with 429 because the queue was full.")
        self.in_flight = 0  # admitted generations: running plus waiting
        self.running = 0
        self.queue_size = 0

    def record_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests.inc(endpoint=endpoint, method=method, status=str(status))
            self.latency.observe(seconds, endpoint=endpoint)
            if status == 429:
                self.rejected.inc()

    def record_first_token(self, seconds: float, method: str) -> None:
        with self._lock:
            self.first_token.observe(seconds, method=method)

    def record_generation(self, method: str, prompt_tokens: int, new_tokens: int, proposed: int, accepted: int,
                          target_forwards: int, cancelled: bool) -> None:
        with self._lock:
            self.prompt_tokens.inc(prompt_tokens, method=method)
            self.generated.inc(new_tokens, method=method)
            self.proposed.inc(proposed, method=method)
            self.accepted.inc(accepted, method=method)
            self.target_forwards.inc(target_forwards, method=method)
            if cancelled:
                self.cancelled.inc(method=method)

    def set_queue(self, in_flight: int, running: int, queue_size: int) -> None:
        with self._lock:
            self.in_flight, self.running, self.queue_size = in_flight, running, queue_size

    def render(self) -> str:
        with self._lock:
            lines: list[str] = []
            for metric in (self.requests, self.latency, self.first_token, self.prompt_tokens, self.generated,
                           self.proposed, self.accepted, self.target_forwards, self.cancelled, self.rejected):
                lines += metric.lines()
            gauges = [
                ("tokenleap_queue_in_flight", "Generations admitted and not finished (running plus waiting).",
                 self.in_flight),
                ("tokenleap_queue_running", "Generations running now (0 or 1).", self.running),
                ("tokenleap_queue_capacity", "Most generations admitted at once (--queue-size).", self.queue_size),
            ]
        rss = resident_memory_bytes()
        if rss is not None:
            gauges.append(("process_resident_memory_bytes", "Resident memory size in bytes.", rss))
        gauges.append(("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                       self.start_time))
        for name, help_text, value in gauges:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_number(value)}"]
        return "\n".join(lines) + "\n"


def parse_metrics(text: str) -> dict[str, float]:
    """Sample name with labels (as written) -> value; enough for tests and the load script."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out
