"""Request bodies of the OpenAI-compatible endpoints (pydantic, strict types).

Types are checked strictly (a string where a number belongs is an error, not a conversion);
fields we do not know are accepted and ignored, as clients send many optional ones. Fields
we know but cannot honour (n > 1, logprobs, tools, ...) are refused in `unsupported()`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class StreamOptions(_Body):
    include_usage: bool | None = None


class _Common(_Body):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # not OpenAI's; vLLM-style extension, send it in extra_body
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    user: str | None = None
    # tokenleap's own: {"method": "sps", "gamma": 4, ...}; the method's options are checked
    # by the method itself.
    tokenleap: dict[str, Any] | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        """(param, message) for each known field set to something this server cannot do."""
        out = []
        if self.n is not None and self.n != 1:
            out.append(("n", f"only n=1 is supported, got n={self.n}"))
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                out.append((name, f"{name} is not supported (use 0 or leave it out)"))
        if self.logit_bias:
            out.append(("logit_bias", "logit_bias is not supported"))
        return out


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        if self.logprobs is not None:
            out.append(("logprobs", "logprobs are not supported"))
        if self.echo:
            out.append(("echo", "echo is not supported"))
        if self.best_of is not None and self.best_of != 1:
            out.append(("best_of", f"only best_of=1 is supported, got {self.best_of}"))
        if self.suffix:
            out.append(("suffix", "suffix is not supported"))
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], (str, list)) \
                and len(self.prompt) != 1:
            out.append(("prompt", f"only one prompt per request is supported, got {len(self.prompt)}"))
        return out


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        if self.logprobs or self.top_logprobs:
            out.append(("logprobs", "logprobs are not supported"))
        if self.tools:
            out.append(("tools", "tools are not supported"))
        if self.response_format and self.response_format.get("type", "text") != "text":
            out.append(("response_format", "only response_format {'type': 'text'} is supported"))
        if self.max_tokens is not None and self.max_completion_tokens is not None \
                and self.max_tokens != self.max_completion_tokens:
            out.append(("max_completion_tokens", "max_tokens and max_completion_tokens disagree; send one"))
        for i, m in enumerate(self.messages):
            if isinstance(m.content, list):
                for part in m.content:
                    if part.type != "text" or part.text is None:
                        out.append((f"messages[{i}].content",
                                    f"only text content parts are supported, got {part.type!r}"))
        return out
