"""Generation settings and the request/response records every backend speaks.

A benchmark run is described by one :class:`GenerationSettings`; the runner turns it
into one :class:`GenerationRequest` per (item, sample). Backends only ever see requests,
so a backend cannot silently apply a setting the report does not record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GenerationSettings:
    """How a benchmark is generated. Part of the run's cache key and of ``eval.json``.

    ``samples`` is k: the number of answers drawn per prompt. With k > 1 the report adds
    pass@k, majority vote and consistency. ``seed`` is the base seed: sample ``s`` of item
    ``i`` is drawn with a seed derived from (seed, task, item id, s), so an item's answers do
    not depend on which other items share its batch or on the run's order.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    samples: int = 1
    stop: tuple[str, ...] = ()
    # ks for which pass@k is reported (only those <= samples are computed).
    pass_k: tuple[int, ...] = (1, 5, 10)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        # Tuples keep the dataclass hashable even when callers pass lists.
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "pass_k", tuple(self.pass_k))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. ``messages`` is a chat (rendered by the backend's chat template);
    ``prompt`` is raw text used verbatim. Exactly one of the two is set."""

    messages: tuple[dict[str, str], ...] | None = None
    prompt: str | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a GenerationRequest needs exactly one of messages or prompt")
        if self.messages is not None:
            object.__setattr__(
                self, "messages", tuple(dict(m) for m in self.messages)
            )
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def key(self) -> dict[str, Any]:
        """JSON-able identity of the request (used by on-disk caches)."""
        return {
            "messages": list(self.messages) if self.messages is not None else None,
            "prompt": self.prompt,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": list(self.stop),
        }


@dataclass
class GenerationOutput:
    """What came back. ``text`` may be ``bytes`` when a backend could not decode it; the
    runner turns undecodable output into a recorded failure, never a silent drop."""

    text: str | bytes
    prompt_text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # "stop" (EOS or stop string), "length" (max_new_tokens), or "error".
    finish_reason: str = "stop"
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """log P(continuation | context). ``context_messages`` are rendered with the chat
    template (with the assistant generation prompt); otherwise ``context`` is raw text."""

    continuation: str
    context: str | None = None
    context_messages: tuple[dict[str, str], ...] | None = None

    def __post_init__(self) -> None:
        if (self.context is None) == (self.context_messages is None):
            raise ValueError("a LoglikelihoodRequest needs exactly one of context or context_messages")
        if self.context_messages is not None:
            object.__setattr__(
                self, "context_messages", tuple(dict(m) for m in self.context_messages)
            )


@dataclass
class LoglikelihoodOutput:
    logprob: float
    # True when every continuation token is the argmax (lm-eval's "is_greedy").
    is_greedy: bool
    n_tokens: int


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any JSON-able parts (not Python's randomised hash())."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF
