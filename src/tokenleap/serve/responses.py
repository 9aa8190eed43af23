"""Response formatting in the OpenAI shapes: completion bodies, stream chunks framed as
server-sent events, usage (with tokenleap's acceptance figures) and the `tokenleap` stats
block, and the streaming response that cancels its generation however it ends."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterator

from fastapi.responses import StreamingResponse

from ..generation import GenerationResult

SSE_DONE = "data: [DONE]\n\n"  # the event that ends every stream


def response_id(endpoint: str) -> str:
    return ("cmpl-" if endpoint == "completions" else "chatcmpl-") + uuid.uuid4().hex


def finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"  # eos and stop strings are both "stop"


def usage_body(result: GenerationResult) -> dict[str, Any]:
    stats = result.stats
    prompt, completion = len(result.prompt_ids), len(result.token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "mean_accepted_length": stats.mean_accepted_length, "acceptance_rate": stats.acceptance_rate}


def stats_summary(result: GenerationResult) -> dict[str, Any]:
    s = result.stats
    return {"method": s.method, "target_forwards": s.target_forwards, "draft_forwards": s.draft_forwards,
            "proposed": s.proposed, "accepted": s.accepted, "wall_s": s.wall_s, "tokens_per_s": s.tokens_per_s,
            "first_token_s": s.first_token_s, "finish_reason": result.finish_reason}


def completion_body(endpoint: str, model_name: str, result: GenerationResult) -> dict[str, Any]:
    """The whole answer to a non-streaming request."""
    rid, created = response_id(endpoint), int(time.time())
    reason = finish_reason(result.finish_reason)
    if endpoint == "completions":
        choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": reason}
        obj = "text_completion"
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": None,
                  "finish_reason": reason}
        obj = "chat.completion"
    return {"id": rid, "object": obj, "created": created, "model": model_name, "choices": [choice],
            "usage": usage_body(result), "tokenleap": stats_summary(result)}


class StreamChunks:
    """The chunks of one streamed response, all with the same id and creation time."""

    def __init__(self, endpoint: str, model_name: str) -> None:
        self.chat = endpoint != "completions"
        self.id, self.created, self.model = response_id(endpoint), int(time.time()), model_name
        self.object = "chat.completion.chunk" if self.chat else "text_completion"

    def chunk(self, text: str | None, finish: str | None = None, role: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": [choice]}

    def usage_chunk(self, result: GenerationResult) -> dict[str, Any]:
        """The last chunk when the client asked for stream_options.include_usage."""
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": [], "usage": usage_body(result), "tokenleap": stats_summary(result)}


def sse_event(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


class JobStreamingResponse(StreamingResponse):
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
