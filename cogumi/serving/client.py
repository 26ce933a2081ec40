"""`cogumi serve` as an evaluation backend, through the official `openai` client.

Phase 5B runs the benchmarks through HTTP only: each request is one
`client.chat.completions.create` against the server's /v1/chat/completions, as a user's
code would send it. Nothing is cached (a cache would answer without the server). Each
answer's route, escalation and latency are kept in `self.answers`, in request order, for
the validation's routing, escalation and load figures.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

from cogumi.evaluation.backends.base import Backend
from cogumi.evaluation.settings import GenerationOutput, GenerationRequest


class ServedBackend(Backend):
    name = "cogumi-serve"

    def __init__(self, base_url: str, model: str, *, bundle_digest: str,
                 timeout_s: float = 600.0) -> None:
        import openai

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.bundle_digest = bundle_digest
        # No retries: a failed request is a finding of the validation, not something to hide.
        self.client = openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0,
                                    timeout=timeout_s)
        self.answers: list[dict] = []
        self._lock = threading.Lock()

    def render(self, messages: Sequence[dict[str, str]], answer_prefix: str | None = None) -> str:
        # The server applies the bundle's template; the report records the messages sent.
        if answer_prefix is not None:
            messages = [*messages, {"role": "assistant", "content": answer_prefix}]
        return json.dumps(list(messages), ensure_ascii=False)

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model,
                "model_digest": f"cogumi-bundle:{self.bundle_digest}:{self.model}"}

    def ask(self, messages: Sequence[dict[str, str]], *, max_tokens: int, temperature: float,
            top_p: float = 1.0, seed: int = 0, stop: Sequence[str] = ()) -> dict:
        """One chat completion: {"id", "text", "finish_reason", "usage", "cogumi",
        "latency_s", "error"}."""
        import openai

        t0 = time.monotonic()
        try:
            resp = self.client.chat.completions.create(
                model=self.model, messages=list(messages), max_tokens=max_tokens,
                temperature=temperature, top_p=top_p, seed=seed, stop=list(stop) or None)
        except openai.OpenAIError as e:
            return {"id": None, "text": "", "finish_reason": "error", "usage": {},
                    "cogumi": None, "latency_s": time.monotonic() - t0,
                    "error": f"{type(e).__name__}: {e}"}
        usage = resp.usage.model_dump() if resp.usage else {}
        return {"id": resp.id, "text": resp.choices[0].message.content or "",
                "finish_reason": resp.choices[0].finish_reason, "usage": usage,
                "cogumi": (resp.model_extra or {}).get("cogumi"),
                "latency_s": time.monotonic() - t0, "error": None}

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutput]:
        outs = []
        for req in requests:
            if req.messages is None:
                raise ValueError("the served system is asked through chat completions only")
            got = self.ask(req.messages, max_tokens=req.max_new_tokens,
                           temperature=req.temperature, top_p=req.top_p, seed=int(req.seed),
                           stop=req.stop)
            with self._lock:
                self.answers.append({"messages": list(req.messages), **got})
            if got["error"] is not None:
                outs.append(GenerationOutput(text="", prompt_text=self.render(req.messages),
                                             finish_reason="error", error=got["error"]))
                continue
            text = got["text"]
            for s in req.stop:  # as the OpenAI backend: servers differ on including it
                j = text.find(s) if s else -1
                if j != -1:
                    text = text[:j]
            outs.append(GenerationOutput(
                text=text, prompt_text=self.render(req.messages),
                prompt_tokens=int(got["usage"].get("prompt_tokens", 0)),
                completion_tokens=int(got["usage"].get("completion_tokens", 0)),
                finish_reason="length" if got["finish_reason"] == "length" else "stop",
                extra={"cogumi": got["cogumi"]}))
        return outs

    def close(self) -> None:
        self.client.close()
