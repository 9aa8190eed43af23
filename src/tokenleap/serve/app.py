"""An OpenAI-compatible HTTP server over `tokenleap` decoding methods.

One loaded target (and optional draft) serves every request. Requests are validated on
arrival, by the planner `generate` and the bench use too (`plan_generation`), then
admitted to a bounded queue: a single worker thread runs generations one at a time, so the
torch work never runs on the event loop. A full queue answers 429. A streaming client that
goes away cancels its generation: the worker closes the generator and frees the slot.

Per request, the decoding method and its options come in an extra body field
`"tokenleap": {"method": "sps", "gamma": 4}` (openai client: `extra_body={"tokenleap": ...}`).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
import queue
import secrets
import sys
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import TokenleapError
from ..generation import GenerationResult, run
from ..methods import METHODS, get_method
from ..models.loading import Model
from ..planner import GenerationPlan, check_compatible, get_model, load_draft, plan_generation, require_draft
from .metrics import CONTENT_TYPE, ServerMetrics
from .schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("tokenleap.serve")

POLL_DISCONNECT_S = 0.25  # how often a non-streaming request checks whether its client left


class ApiError(Exception):
    """An error answered with an OpenAI-style body: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


# ---------------------------------------------------------------------------------------------
# The worker: one thread, one generation at a time, a bounded number admitted.


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


# ---------------------------------------------------------------------------------------------
# Request handling.


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"  # eos and stop strings are both "stop"


def _usage(result: GenerationResult) -> dict[str, Any]:
    stats = result.stats
    prompt, completion = len(result.prompt_ids), len(result.token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "mean_accepted_length": stats.mean_accepted_length, "acceptance_rate": stats.acceptance_rate}


def _stats_summary(result: GenerationResult) -> dict[str, Any]:
    s = result.stats
    return {"method": s.method, "target_forwards": s.target_forwards, "draft_forwards": s.draft_forwards,
            "proposed": s.proposed, "accepted": s.accepted, "wall_s": s.wall_s, "tokens_per_s": s.tokens_per_s,
            "first_token_s": s.first_token_s, "finish_reason": result.finish_reason}


class _JobStreamingResponse(StreamingResponse):
    """A streaming response that calls `on_close` however it ends. Starlette stops sending when
    the client disconnects but may leave the body generator unfinished; this makes sure the
    generation is cancelled and its slot freed at once."""

    def __init__(self, content: AsyncIterator[str], on_close: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


class Server:
    """State behind one app: models, worker, metrics. `create_app` wires it into FastAPI."""

    def __init__(self, model: Model, draft: Model | None, default_method: str, queue_size: int) -> None:
        if get_method(default_method).needs_draft:
            require_draft(default_method, draft)
        if draft is not None:
            check_compatible(model, draft)
        self.model = model
        self.draft = draft
        self.default_method = default_method
        self.created = int(time.time())
        self.metrics = ServerMetrics()
        self.engine = Engine(queue_size, self.metrics)
        # Requests are tokenised on other threads while the worker decodes: they get their own
        # copy of the tokenizer (a fast tokenizer is not meant to be shared across threads).
        self._encoder = dataclasses.replace(model, tokenizer=copy.deepcopy(model.tokenizer))
        self._encode_lock = threading.Lock()

    # -- validation -> Plan ----------------------------------------------------------------

    def _prompt_ids(self, req: CompletionRequest | ChatCompletionRequest) -> list[int]:
        enc = self._encoder
        if isinstance(req, CompletionRequest):
            prompt: Any = req.prompt
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
                prompt = prompt[0]
            with self._encode_lock:
                return enc.encode(prompt, chat=False)  # completions are raw text: no chat template
        messages = []
        for m in req.messages:
            content = m.content
            if isinstance(content, list):
                content = "\n".join(part.text or "" for part in content)
            messages.append({"role": "system" if m.role == "developer" else m.role, "content": content or ""})
        with self._encode_lock:
            if getattr(enc.tokenizer, "chat_template", None):
                try:
                    return enc.encode(messages)
                except TokenleapError:
                    raise
                except Exception as exc:  # the model's chat template refused these messages
                    if type(exc).__module__.startswith("jinja2"):
                        raise bad_request(f"the model's chat template rejected the messages: {exc}",
                                          param="messages") from None
                    raise
            # No chat template (e.g. a base model): the contents, one per line.
            return enc.encode("\n".join(m["content"] for m in messages), chat=False)

    # The planner's parameters under their names in this API.
    PARAMS = {"max_new_tokens": "max_tokens", "method": "tokenleap.method", "draft": "tokenleap.method",
              "options": "tokenleap"}

    def plan(self, req: CompletionRequest | ChatCompletionRequest, endpoint: str) -> Plan:
        for param, message in req.unsupported():
            raise bad_request(message, param=param)
        options = dict(req.tokenleap or {})
        method = options.pop("method", None)
        if method is None:
            method = self.default_method
        if not isinstance(method, str):
            raise bad_request(f"tokenleap.method must be a string, got {method!r}", param="tokenleap.method")
        prompt_param = "prompt" if isinstance(req, CompletionRequest) else "messages"
        try:
            prompt_ids = self._prompt_ids(req)
        except TokenleapError as exc:
            raise bad_request(str(exc), param=prompt_param) from None
        max_tokens = req.max_tokens
        if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
            max_tokens = req.max_completion_tokens
        if max_tokens is None:
            # OpenAI: 16 for completions, "until the context is full" for chat.
            room = max(1, self.model.max_context - len(prompt_ids))
            max_tokens = min(16, room) if isinstance(req, CompletionRequest) else room
        try:
            # The draft was resolved once, at start: without one, draft methods are refused.
            generation = plan_generation(
                prompt=prompt_ids, method=method, model=self.model, draft=self.draft, registry_draft=False,
                max_new_tokens=max_tokens, stop=req.stop, chat=False, options=options,
                # OpenAI's defaults: temperature 1, top_p 1. temperature 0 is greedy.
                temperature=1.0 if req.temperature is None else req.temperature,
                top_k=0 if req.top_k is None else req.top_k, top_p=1.0 if req.top_p is None else req.top_p,
                seed=secrets.randbits(63) if req.seed is None else req.seed, whole_output_in_context=True)
        except TokenleapError as exc:
            param = getattr(exc, "param", None)
            raise bad_request(str(exc), param={"prompt": prompt_param, **self.PARAMS}.get(param, param),
                              code=getattr(exc, "code", None)) from None
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return Plan(endpoint=endpoint, method=method, generation=generation, stream=bool(req.stream),
                    include_usage=include_usage)

    # -- endpoints -------------------------------------------------------------------------

    async def generate(self, request: Request, endpoint: str) -> Response:
        received = time.perf_counter()
        method_label = "none"
        try:
            raw = await request.body()
            try:
                body = json.loads(raw, parse_constant=_reject_constant)
            except (ValueError, UnicodeDecodeError) as exc:
                raise bad_request(f"the request body is not valid JSON: {exc}") from None
            if not isinstance(body, dict):
                raise bad_request("the request body must be a JSON object")
            block = body.get("tokenleap")
            wanted = block.get("method", self.default_method) if isinstance(block, dict) else self.default_method
            method_label = wanted if isinstance(wanted, str) and wanted in METHODS else "invalid"
            schema = CompletionRequest if endpoint == "completions" else ChatCompletionRequest
            try:
                req = schema.model_validate(body)
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err["loc"])
                raise bad_request(f"invalid '{loc}': {err['msg']}", param=str(err["loc"][0]) if err["loc"] else None
                                  ) from None
            plan = await asyncio.to_thread(self.plan, req, endpoint)
            job = Job(plan, asyncio.get_running_loop(), received)
            if not self.engine.try_submit(job):
                raise ApiError(429, f"the server is busy: {self.engine.queue_size} requests are already queued; "
                               "retry later", type="rate_limit_exceeded", code="queue_full",
                               headers={"Retry-After": "1"})
        except ApiError as exc:
            self.metrics.record_request(endpoint, method_label, exc.status, time.perf_counter() - received)
            return exc.response()
        if plan.stream:
            return _JobStreamingResponse(self._stream(job), on_close=lambda: self._finish(job, 499),
                                         media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await self._collect(job, request)

    def _finish(self, job: Job, status: int) -> None:
        """Record the request once; 499 (client closed the request) also cancels its generation."""
        if job.finished:
            return
        job.finished = True
        if status == 499:
            self.engine.cancel(job)
        self.metrics.record_request(job.plan.endpoint, job.plan.method, status, time.perf_counter() - job.received)

    def _response_id(self, endpoint: str) -> str:
        return ("cmpl-" if endpoint == "completions" else "chatcmpl-") + uuid.uuid4().hex

    async def _collect(self, job: Job, request: Request) -> Response:
        plan = job.plan
        kind, payload = "cancelled", None
        try:
            while True:
                try:
                    kind, payload = await asyncio.wait_for(job.events.get(), POLL_DISCONNECT_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        kind = "cancelled"
                        break
                    continue
                if kind in ("done", "error", "cancelled"):
                    break
        finally:
            if kind not in ("done", "error"):  # the client left (or this task was cancelled)
                self._finish(job, 499)
        if kind == "cancelled":
            return Response(status_code=499)
        if kind == "error":
            self._finish(job, payload.status)
            return payload.response()
        result: GenerationResult = payload
        rid, created, name = self._response_id(plan.endpoint), int(time.time()), self.model.name
        reason = _finish_reason(result.finish_reason)
        if plan.endpoint == "completions":
            choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": reason}
            obj = "text_completion"
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": None,
                      "finish_reason": reason}
            obj = "chat.completion"
        body = {"id": rid, "object": obj, "created": created, "model": name, "choices": [choice],
                "usage": _usage(result), "tokenleap": _stats_summary(result)}
        self._finish(job, 200)
        return JSONResponse(body)

    async def _stream(self, job: Job) -> AsyncIterator[str]:
        plan = job.plan
        chat = plan.endpoint != "completions"
        rid, created, name = self._response_id(plan.endpoint), int(time.time()), self.model.name
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None = None, role: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {}
                if role:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            return {"id": rid, "object": obj, "created": created, "model": name, "choices": [choice]}

        status = 499  # until the stream ends properly, the client is taken to have left
        try:
            if chat:
                yield _sse(chunk("", role=True))
            while True:
                kind, payload = await job.events.get()
                if kind == "text":
                    yield _sse(chunk(payload))
                elif kind == "done":
                    result: GenerationResult = payload
                    yield _sse(chunk(None if chat else "", finish=_finish_reason(result.finish_reason)))
                    if plan.include_usage:
                        yield _sse({"id": rid, "object": obj, "created": created, "model": name, "choices": [],
                                    "usage": _usage(result), "tokenleap": _stats_summary(result)})
                    yield "data: [DONE]\n\n"
                    status = 200
                    return
                elif kind == "error":
                    # Headers are sent already: the error travels as an event, as OpenAI does.
                    yield _sse(payload.body())
                    yield "data: [DONE]\n\n"
                    status = payload.status
                    return
                else:  # cancelled
                    return
        finally:
            self._finish(job, status)

    def models_body(self) -> dict[str, Any]:
        data = [{"id": self.model.name, "object": "model", "created": self.created, "owned_by": "tokenleap",
                 "tokenleap": {"methods": list(METHODS), "default_method": self.default_method,
                               "draft": self.draft.name if self.draft else None,
                               "max_context": self.model.max_context}}]
        return {"object": "list", "data": data}


def create_app(model: Model, draft: Model | None = None, default_method: str = "ar", queue_size: int = 16) -> FastAPI:
    """The FastAPI app serving `model` (and `draft`, for draft-based methods).

    default_method: the method used when a request names none. queue_size: the most
    generations admitted at once, the running one included; more get 429."""
    server = Server(model, draft, default_method, queue_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(server.engine.stop)

    app = FastAPI(title="tokenleap", description="OpenAI-compatible API over tokenleap decoding methods",
                  lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), type=kind, headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return ApiError(500, f"internal server error: {type(exc).__name__}", type="server_error").response()

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await server.generate(request, "completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await server.generate(request, "chat.completions")

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        server.metrics.record_request("models", "none", 200, 0.0)
        return JSONResponse(server.models_body())

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> JSONResponse:
        for entry in server.models_body()["data"]:
            if entry["id"] == model_id:
                return JSONResponse(entry)
        return ApiError(404, f"the model {model_id!r} does not exist; this server serves {model.name!r}",
                        type="invalid_request_error", param="model", code="model_not_found").response()

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "model": model.name, "draft": draft.name if draft else None,
                             "default_method": default_method, "in_flight": server.engine.in_flight,
                             "queue_size": server.engine.queue_size, **model.runtime()})

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics.render(), media_type=CONTENT_TYPE)

    return app


def serve(model: str, draft: str | None = None, host: str = "127.0.0.1", port: int = 8000, method: str = "ar",
          dtype: str | None = "auto", device: str = "auto", quant: str = "none", queue_size: int = 16,
          log_level: str = "info") -> None:
    """Load the models and run the server until interrupted (what `tokenleap serve` does)."""
    import uvicorn

    get_method(method)  # fail before loading anything
    if queue_size < 1:
        raise TokenleapError(f"--queue-size must be >= 1, got {queue_size}")
    target = get_model(model, dtype, device, quant)
    try:
        draft_model = load_draft(target, draft, dtype=dtype, device=device)
    except TokenleapError as exc:
        if draft:
            raise
        # The registry's draft is a convenience: without it the server still serves the
        # methods that need no draft (a request for one gets generate's error).
        print(f"warning: serving without a draft model: {exc}", file=sys.stderr)
        draft_model = None
    app = create_app(target, draft_model, default_method=method, queue_size=queue_size)
    runtime = target.runtime()
    print(f"serving {target.name} on {runtime['device']} in {runtime['dtype']} ({runtime['kernels']} kernels; draft: "
          f"{draft_model.name if draft_model else 'none'}, default method: {method})"
          f" on http://{host}:{port}", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
