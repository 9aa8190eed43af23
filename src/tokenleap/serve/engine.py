"""The worker queue: admitted generations wait in a bounded queue and a single worker thread
runs them one at a time, so the torch work never runs on the event loop.

`Plan` is a validated request, `Job` one admitted generation (its events go back to the
event loop on an asyncio queue), `Engine` the queue and its thread, with cancellation: a
waiting job gives its slot back at once, a running one between two blocks of tokens.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..errors import TokenleapError
from ..generation import GenerationResult, run
from ..planner import GenerationPlan
from .errors import ApiError, bad_request
from .metrics import ServerMetrics

log = logging.getLogger("tokenleap.serve")


@dataclass
class Plan:
    """A validated generation request, ready for the worker."""

    endpoint: str  # "completions" or "chat.completions"
    method: str
    generation: GenerationPlan
    stream: bool
    include_usage: bool


class Job:
    """One admitted generation. The worker posts ("text", str), then ("done", result) or
    ("error", ApiError) to `events`, an asyncio queue read on the event loop."""

    def __init__(self, plan: Plan, loop: asyncio.AbstractEventLoop, received: float) -> None:
        self.plan = plan
        self.loop = loop
        self.received = received  # perf_counter() when the request arrived
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.state = "new"  # new -> queued -> running -> done, or queued -> dropped
        self.finished = False  # the request has been answered and recorded

    def post(self, kind: str, payload: Any = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass


class Engine:
    """A bounded queue in front of a single worker thread.

    queue_size counts every admitted generation, the running one included: with
    queue_size=1 a second request is refused while the first runs."""

    def __init__(self, queue_size: int, metrics: ServerMetrics) -> None:
        if not isinstance(queue_size, int) or queue_size < 1:
            raise TokenleapError(f"queue_size must be an integer >= 1, got {queue_size!r}")
        self.queue_size = queue_size
        self.metrics = metrics
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._in_flight = 0
        self._current: Job | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._publish()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def start(self) -> None:
        with self._lock:
            self._stopping = False
            self._ensure_worker()

    def _ensure_worker(self) -> None:  # under self._lock
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="tokenleap-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel the running generation, drop the waiting ones, end the worker."""
        with self._lock:
            thread, current = self._thread, self._current
            self._thread = None
            self._stopping = True
        if current is not None:
            current.cancelled.set()
        if thread is not None:
            self._jobs.put(None)
            thread.join(timeout)

    def try_submit(self, job: Job) -> bool:
        """Admit `job` unless the queue is full (or the server is stopping)."""
        with self._lock:
            if self._in_flight >= self.queue_size or self._stopping:
                return False
            self._ensure_worker()  # also serves an app run without its lifespan
            self._in_flight += 1
            job.state = "queued"
            self._publish()
        self._jobs.put(job)
        return True

    def cancel(self, job: Job) -> None:
        """The client went away: a waiting job gives its slot back now, a running one as soon
        as the worker sees the flag (between two blocks of tokens)."""
        job.cancelled.set()
        with self._lock:
            if job.state == "queued":
                job.state = "dropped"
                self._in_flight -= 1
                self._publish()

    def _publish(self) -> None:
        self.metrics.set_queue(self._in_flight, int(self._current is not None), self.queue_size)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                if job.state != "queued":  # cancelled while waiting; its slot is already free
                    continue
                if self._stopping:
                    job.state = "dropped"
                    self._in_flight -= 1
                    self._publish()
                    job.post("error", ApiError(503, "the server is shutting down", type="server_error"))
                    continue
                job.state = "running"
                self._current = job
                self._publish()
            try:
                self._execute(job)
            finally:
                with self._lock:
                    job.state = "done"
                    self._current = None
                    self._in_flight -= 1
                    self._publish()

    def _execute(self, job: Job) -> None:
        plan = job.plan
        stats = plan.generation.ctx.stats
        pieces = run(plan.generation)
        result: GenerationResult | None = None
        cancelled = False
        first = True
        try:
            for piece in pieces:
                if job.cancelled.is_set():
                    cancelled = True
                    break
                if isinstance(piece, GenerationResult):
                    result = piece
                    continue
                if first:
                    first = False
                    self.metrics.record_first_token(time.perf_counter() - job.received, plan.method)
                if piece and plan.stream:
                    job.post("text", piece)
        except TokenleapError as exc:
            job.post("error", bad_request(str(exc)))
            return
        except Exception as exc:  # a bug, not bad input: log it, answer 500, keep serving
            log.exception("generation failed")
            job.post("error", ApiError(500, f"internal error during generation: {type(exc).__name__}: {exc}",
                                       type="server_error"))
            return
        finally:
            pieces.close()  # stops the method's generator (and its KV caches) when cancelled
            self.metrics.record_generation(plan.method, stats.prompt_tokens, stats.new_tokens, stats.proposed,
                                           stats.accepted, stats.target_forwards, cancelled)
        if cancelled:
            job.post("cancelled")
        else:
            job.post("done", result)
