"""An OpenAI-compatible HTTP server over `tokenleap` decoding methods.

One loaded target (and optional draft) serves every request. Requests are validated on
arrival, by the planner `generate` and the bench use too (`plan_generation`), then
admitted to a bounded queue: a single worker thread runs generations one at a time, so the
torch work never runs on the event loop. A full queue answers 429. A streaming client that
goes away cancels its generation: the worker closes the generator and frees the slot.

Per request, the decoding method and its options come in an extra body field
`"tokenleap": {"method": "sps", "gamma": 4}` (openai client: `extra_body={"tokenleap": ...}`).

This module is the wiring: `Server` (routes' state and request flow), `create_app`, `serve`.
The parts: `errors` (OpenAI-style error bodies), `validate` (request body -> `Plan`),
`engine` (the queue and its worker thread), `responses` (bodies, stream chunks, SSE).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import TokenleapError
from ..generation import GenerationResult
from ..methods import METHODS, get_method
from ..models.loading import Model
from ..planner import check_compatible, get_model, load_draft, require_draft
from .engine import Engine, Job, Plan
from .errors import ApiError, bad_request
from .metrics import CONTENT_TYPE, ServerMetrics
from .responses import SSE_DONE, JobStreamingResponse, StreamChunks, completion_body, finish_reason, sse_event
from .schemas import ChatCompletionRequest, CompletionRequest
from .validate import RequestPlanner, method_label, parse_body, validate_request

# What callers import from here; ApiError, bad_request, Engine, Job and Plan are re-exported
# from the modules that define them, so imports from `tokenleap.serve.app` keep working.
__all__ = ["ApiError", "Engine", "Job", "Plan", "Server", "bad_request", "create_app", "serve"]

log = logging.getLogger("tokenleap.serve")

POLL_DISCONNECT_S = 0.25  # how often a non-streaming request checks whether its client left


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
        self.planner = RequestPlanner(model, draft, default_method)

    def plan(self, req: CompletionRequest | ChatCompletionRequest, endpoint: str) -> Plan:
        """Validate `req` into a Plan for the worker (an ApiError if it is refused)."""
        return self.planner.plan(req, endpoint)

    # -- endpoints -------------------------------------------------------------------------

    async def generate(self, request: Request, endpoint: str) -> Response:
        received = time.perf_counter()
        method = "none"
        try:
            body = parse_body(await request.body())
            method = method_label(body, self.default_method)
            req = validate_request(body, endpoint)
            plan = await asyncio.to_thread(self.plan, req, endpoint)
            job = Job(plan, asyncio.get_running_loop(), received)
            if not self.engine.try_submit(job):
                raise ApiError(429, f"the server is busy: {self.engine.queue_size} requests are already queued; "
                               "retry later", type="rate_limit_exceeded", code="queue_full",
                               headers={"Retry-After": "1"})
        except ApiError as exc:
            self.metrics.record_request(endpoint, method, exc.status, time.perf_counter() - received)
            return exc.response()
        if plan.stream:
            return JobStreamingResponse(self._stream(job), on_close=lambda: self._finish(job, 499),
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

    async def _collect(self, job: Job, request: Request) -> Response:
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
        body = completion_body(job.plan.endpoint, self.model.name, result)
        self._finish(job, 200)
        return JSONResponse(body)

    async def _stream(self, job: Job) -> AsyncIterator[str]:
        plan = job.plan
        chunks = StreamChunks(plan.endpoint, self.model.name)
        chat = chunks.chat
        status = 499  # until the stream ends properly, the client is taken to have left
        try:
            if chat:
                yield sse_event(chunks.chunk("", role=True))
            while True:
                kind, payload = await job.events.get()
                if kind == "text":
                    yield sse_event(chunks.chunk(payload))
                elif kind == "done":
                    result: GenerationResult = payload
                    yield sse_event(chunks.chunk(None if chat else "", finish=finish_reason(result.finish_reason)))
                    if plan.include_usage:
                        yield sse_event(chunks.usage_chunk(result))
                    yield SSE_DONE
                    status = 200
                    return
                elif kind == "error":
                    # Headers are sent already: the error travels as an event, as OpenAI does.
                    yield sse_event(payload.body())
                    yield SSE_DONE
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
