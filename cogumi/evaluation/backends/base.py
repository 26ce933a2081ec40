"""The one small interface every generation backend implements.

Benchmarks talk only to :class:`Backend`, so the same task runs unchanged on transformers,
llama.cpp or an OpenAI-compatible endpoint.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from ..settings import (
    GenerationOutput,
    GenerationRequest,
    LoglikelihoodOutput,
    LoglikelihoodRequest,
)


def plain_chat(messages: Sequence[dict[str, str]], answer_prefix: str | None = None) -> str:
    """The recorded fallback for a model without a chat template: 'role: content' lines,
    then "assistant:" (and the answer prefix, if any, after a space)."""
    return ("".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            + ("" if answer_prefix is None else " " + answer_prefix))


def continue_final_message(rendered: str, prefix: str) -> str:
    """A chat rendered with ``prefix`` as its final assistant message, cut just after that
    message's text (whatever the template writes after it, such as an end-of-turn token, is
    dropped): transformers' ``continue_final_message`` rule, for renderers outside it."""
    at = rendered.rfind(prefix.strip())
    if at < 0:
        raise BackendError(f"the chat template dropped the answer prefix {prefix!r}")
    return rendered[: at + len(prefix.strip())]


def with_single_bos(ids: list[int], bos_id: int | None, add: bool) -> list[int]:
    """Prompt ids with the BOS policy applied: one BOS in front when `add`, never two
    (a chat template that writes BOS text plus a tokenizer that adds one would double it)."""
    if bos_id is None:
        return ids
    if add and (not ids or ids[0] != bos_id):
        ids.insert(0, bos_id)
    while len(ids) >= 2 and ids[0] == bos_id and ids[1] == bos_id:
        del ids[0]
    return ids


class BackendError(RuntimeError):
    """A backend could not do what was asked (bad configuration, unsupported feature)."""


class Backend(abc.ABC):
    """Batched generation with per-request settings, and continuation log-likelihoods."""

    #: short name recorded in reports ("transformers", "llama.cpp", "openai").
    name: str = "backend"

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutput]:
        """One output per request, in request order. Each request carries its own
        temperature, seed, max_new_tokens and stop strings."""

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodOutput]:
        """log P(continuation | context) per request, in request order."""
        raise BackendError(f"the {self.name} backend does not provide log-likelihoods")

    @property
    def supports_loglikelihood(self) -> bool:
        return type(self).loglikelihood is not Backend.loglikelihood

    @abc.abstractmethod
    def render(self, messages: Sequence[dict[str, str]], answer_prefix: str | None = None) -> str:
        """The exact prompt text a chat becomes (recorded per item in the report).

        ``answer_prefix``: the start of the assistant's answer ("The answer is"), rendered
        *inside* the assistant turn as the chat template writes it, and left open, which is
        what transformers calls ``continue_final_message`` and lm-eval's ``gen_prefix`` does.
        Gluing it to the generation prompt instead is not the same text under every template
        (Gemma's question/answer layout puts a space after "Answer:")."""

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """What model this is: recorded in reports and part of the run cache key.
        Must contain ``model_digest``."""

    def close(self) -> None:  # noqa: B027 - optional hook; most backends hold nothing
        """Release connections or native handles (default: nothing to release)."""
