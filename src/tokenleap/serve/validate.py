"""Request validation: a request body becomes a `Plan` for the worker, or a 400.

Here the body is parsed as JSON, checked against the OpenAI schemas and its prompt is
tokenised; the request policy (method, options, sampling, lengths) is the planner's,
`tokenleap.planner.plan_generation`, which `generate` and the bench use too. Its errors are
answered under this API's parameter names.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import secrets
import threading
from typing import Any

from pydantic import ValidationError

from ..errors import TokenleapError
from ..methods import METHODS
from ..models.loading import Model
from ..planner import plan_generation, registered_options
from .engine import Plan
from .errors import bad_request
from .schemas import ChatCompletionRequest, CompletionRequest

# The planner's parameters under their names in this API.
API_PARAMS = {"max_new_tokens": "max_tokens", "method": "tokenleap.method", "draft": "tokenleap.method",
              "options": "tokenleap"}


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object (NaN and Infinity refused)."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def method_label(body: dict[str, Any], default_method: str) -> str:
    """The method a body asks for, as a metrics label: "invalid" when it names no known method."""
    block = body.get("tokenleap")
    wanted = block.get("method", default_method) if isinstance(block, dict) else default_method
    return wanted if isinstance(wanted, str) and wanted in METHODS else "invalid"


def validate_request(body: dict[str, Any], endpoint: str) -> CompletionRequest | ChatCompletionRequest:
    """The body checked against the endpoint's schema; the first error is answered."""
    schema = CompletionRequest if endpoint == "completions" else ChatCompletionRequest
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise bad_request(f"invalid '{loc}': {err['msg']}", param=str(err["loc"][0]) if err["loc"] else None
                          ) from None


class RequestPlanner:
    """Turns validated requests into `Plan`s for one served model (and optional draft)."""

    def __init__(self, model: Model, draft: Model | None, default_method: str) -> None:
        self.model = model
        self.draft = draft
        self.default_method = default_method
        # Requests are tokenised on other threads while the worker decodes: they get their own
        # copy of the tokenizer (a fast tokenizer is not meant to be shared across threads).
        self._encoder = dataclasses.replace(model, tokenizer=copy.deepcopy(model.tokenizer))
        self._encode_lock = threading.Lock()

    def prompt_ids(self, req: CompletionRequest | ChatCompletionRequest) -> list[int]:
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
            prompt_ids = self.prompt_ids(req)
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
            # The model's registry entry may set default options for the method: the request's
            # own lie over them, as `generate`'s keywords do.
            options = {**registered_options(self.model, method), **options}
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
            raise bad_request(str(exc), param={"prompt": prompt_param, **API_PARAMS}.get(param, param),
                              code=getattr(exc, "code", None)) from None
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return Plan(endpoint=endpoint, method=method, generation=generation, stream=bool(req.stream),
                    include_usage=include_usage)
