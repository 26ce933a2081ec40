"""What the teacher may cost: tokens and dollars at the profile's price table.

Before a request is sent, its worst case is reserved: its prompt's upper bound in tokens
(:func:`prompt_token_bound`) plus its whole completion budget (``max_tokens``). A request
whose reservation does not fit what is left is not sent, so the spend never exceeds the
budget; when the answer comes back, the reservation is replaced by the tokens the server
reports, which frees the difference for the next request.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any


class BudgetExceeded(RuntimeError):
    """A stop requested by the budget (``on_budget="raise"``); one line."""


# Chat templates add a few tokens per message (role markers, end of turn) and a few for the
# generation prompt; 8 and 16 are above what ChatML, Llama 3 and Gemma write.
PER_MESSAGE_TOKENS = 8
PER_CHAT_TOKENS = 16


def prompt_token_bound(messages: list[dict[str, str]] | None, prompt: str | None) -> int:
    """An upper bound on the prompt's tokens without the teacher's tokenizer: every token of a
    byte-level BPE tokenizer (GPT, Llama 3, Qwen, Gemma) covers at least one UTF-8 byte, so a
    text has at most as many tokens as bytes; the template's own tokens are added per message."""
    if messages is not None:
        body = sum(len(m.get("content", "").encode()) + len(m.get("role", "").encode())
                   for m in messages)
        return body + PER_MESSAGE_TOKENS * len(messages) + PER_CHAT_TOKENS
    return len((prompt or "").encode()) + PER_CHAT_TOKENS


def cost_usd(prices: tuple[float, float], prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1e6


@dataclass
class Budget:
    """At most ``max_usd`` dollars and ``max_tokens`` tokens (prompt + completion) of requests
    actually sent (cache hits cost nothing); None: no limit on that axis."""
    max_usd: float | None = None
    max_tokens: int | None = None
    spent_usd: float = 0.0
    spent_tokens: int = 0
    reserved_usd: float = 0.0
    reserved_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("max_usd", "max_tokens"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or v < 0 or math.isnan(v)):
                raise ValueError(f"budget {name} must be a number >= 0 or None, got {v!r}")

    def try_reserve(self, tokens: int, usd: float) -> bool:
        """Reserve a request's worst case if it fits what is left; False if it does not."""
        with self._lock:
            if self.max_tokens is not None and \
                    self.spent_tokens + self.reserved_tokens + tokens > self.max_tokens:
                return False
            if self.max_usd is not None and \
                    self.spent_usd + self.reserved_usd + usd > self.max_usd + 1e-12:
                return False
            self.reserved_tokens += tokens
            self.reserved_usd += usd
            return True

    def settle(self, reserved_tokens: int, reserved_usd: float, tokens: int, usd: float) -> None:
        """Replace a reservation by what the request cost (0, 0 when it failed)."""
        with self._lock:
            self.reserved_tokens -= reserved_tokens
            self.reserved_usd -= reserved_usd
            self.spent_tokens += tokens
            self.spent_usd += usd

    def to_dict(self) -> dict[str, Any]:
        return {"max_usd": self.max_usd, "max_tokens": self.max_tokens,
                "spent_usd": self.spent_usd, "spent_tokens": self.spent_tokens}
