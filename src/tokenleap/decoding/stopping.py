"""When to stop, and how text leaves the loop: EOS, max_new_tokens, stop strings, streaming."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class StopCondition:
    max_new_tokens: int
    eos_token_ids: frozenset[int]
    stop_strings: tuple[str, ...] = ()

    def check(self, new_ids: list[int], text: str | None) -> str | None:
        """The finish reason once the newest token ends generation, else None."""
        if new_ids and new_ids[-1] in self.eos_token_ids:
            return "eos"
        if text is not None and any(s in text for s in self.stop_strings):
            return "stop"
        if len(new_ids) >= self.max_new_tokens:
            return "length"
        return None

    def cut_text(self, text: str) -> str:
        """Text up to the earliest stop string."""
        cut = min((text.find(s) for s in self.stop_strings if s in text), default=-1)
        return text if cut < 0 else text[:cut]


class TextStream:
    """Incremental detokenisation: re-decode the generated ids, hand out only settled text.

    Text is held back while it ends in an incomplete UTF-8 sequence, or while its end could
    still become a stop string."""

    def __init__(self, decode: Callable[[list[int]], str], stop_strings: tuple[str, ...] = ()) -> None:
        self.decode = decode
        self.stop_strings = stop_strings
        self.sent = 0

    def text(self, ids: list[int]) -> str:
        return self.decode(ids)

    def settled(self, text: str) -> str:
        """New text that is safe to show now."""
        end = len(text)
        if text.endswith("\ufffd"):
            end = len(text.rstrip("\ufffd"))
        for s in self.stop_strings:
            for k in range(min(len(s) - 1, end), 0, -1):
                if text[:end].endswith(s[:k]):
                    end -= k
                    break
        piece = text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return piece

    def flush(self, final_text: str) -> str:
        piece = final_text[self.sent:]
        self.sent = len(final_text)
        return piece
