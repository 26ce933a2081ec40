"""Any OpenAI-compatible HTTP endpoint (hosted teachers and judges, or a local server).

Retries with exponential backoff (the server unreachable or timing out, 408, 429 honouring
Retry-After, 5xx, a 200 whose body is not JSON or not a completion), a concurrency limit, an
on-disk cache keyed by the request (endpoint, model and the exact request body; never the
API key) that only ever holds complete answers, and token and cost accounting in
``self.usage``; ``self.usage["failures"]`` counts every failed attempt by its reason
(:data:`FAILURE_REASONS`). A request that still fails after the retries becomes an output
with ``error`` set, which the runner records as that item's failure and the run goes on;
with ``on_failure="raise"`` (a teacher, whose every answer is needed) it raises
:class:`EndpointFailed` instead, one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..settings import GenerationOutput, GenerationRequest
from .base import Backend

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}

FAILURE_REASONS = {
    "unreachable": "the connection was refused or could not be made (server down)",
    "timeout": "no complete answer within timeout_s",
    "transport": "another transport error (connection reset, protocol error)",
    "http_<status>": "the server answered with this HTTP status (429 and 5xx are retried)",
    "malformed_json": "a 200 whose body is not JSON",
    "malformed_response": "a 200 JSON body that is not a completion (no choices[0] text)",
}


class EndpointFailed(RuntimeError):
    """A request failed after the retry budget (``on_failure="raise"``); one line."""


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 4,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout_s: float = 120.0,
        cache_dir: str | Path | None = None,
        price_per_mtok: tuple[float, float] | None = None,
        extra_body: dict[str, Any] | None = None,
        transport: Any = None,
        on_failure: str = "record",
        model_digest: str | None = None,
    ) -> None:
        import httpx

        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if on_failure not in ("record", "raise"):
            raise ValueError("on_failure must be 'record' or 'raise'")
        self.on_failure = on_failure
        # A model whose weights are known (a GGUF cogumi serves on a port of the moment):
        # its digest names it in reports and cache keys instead of the endpoint.
        self.model_digest = model_digest
        self.base_url = base_url.rstrip("/")
        self.model = model
        key = api_key if api_key is not None else os.environ.get(api_key_env)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(timeout=timeout_s, headers=headers, transport=transport)
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.price = price_per_mtok
        self.extra_body = dict(extra_body or {})
        self._lock = threading.Lock()
        self.usage = {"requests": 0, "http_calls": 0, "cache_hits": 0, "retries": 0, "errors": 0,
                      "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
                      "failures": {}}

    # ------------------------------------------------------------------ interface
    def render(self, messages: Sequence[dict[str, str]], answer_prefix: str | None = None) -> str:
        # The server applies its own template; the report records the messages as sent.
        if answer_prefix is not None:
            messages = [*messages, {"role": "assistant", "content": answer_prefix}]
        return json.dumps(list(messages), ensure_ascii=False)

    def identity(self) -> dict[str, Any]:
        if self.model_digest is not None:
            return {"backend": self.name, "model": self.model, "model_digest": self.model_digest}
        return {"backend": self.name, "base_url": self.base_url, "model": self.model,
                # A remote model's weights are unknown: its name and endpoint stand in.
                "model_digest": f"openai:{self.model}@{self.base_url}"}

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutput]:
        if self.concurrency == 1 or len(requests) <= 1:
            return [self._one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, requests))

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ one request
    def _body(self, req: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": req.max_new_tokens,
                                "temperature": req.temperature, "top_p": req.top_p,
                                "seed": req.seed}
        if req.stop:
            body["stop"] = list(req.stop)
        if req.messages is not None:
            body["messages"] = list(req.messages)
            path = "/chat/completions"
        else:
            body["prompt"] = req.prompt
            path = "/completions"
        body.update(self.extra_body)
        return path, body

    def cache_key(self, req: GenerationRequest) -> str:
        path, body = self._body(req)
        where = self.model_digest or self.base_url  # a served GGUF: any port, same answers
        blob = json.dumps({"url": where + path, "body": body}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _one(self, req: GenerationRequest) -> GenerationOutput:
        path, body = self._body(req)
        prompt_text = self.render(req.messages) if req.messages is not None else req.prompt
        with self._lock:
            self.usage["requests"] += 1
        key = self.cache_key(req)
        cached = self._cache_get(key)
        if cached is not None:
            with self._lock:
                self.usage["cache_hits"] += 1
            return self._to_output(cached, prompt_text, req, from_cache=True)
        data, error = self._post(path, body)
        if error is not None:
            with self._lock:
                self.usage["errors"] += 1
            if self.on_failure == "raise":
                raise EndpointFailed(f"{self.base_url}{path} (model {self.model}): {error}")
            return GenerationOutput(text="", prompt_text=prompt_text, finish_reason="error",
                                    error=error)
        self._cache_put(key, data)
        return self._to_output(data, prompt_text, req, from_cache=False)

    def _post(self, path: str, body: dict[str, Any]) -> tuple[dict | None, str | None]:
        import httpx

        url = self.base_url + path
        last = "no attempt"
        reasons: dict[str, int] = {}

        def failed(reason: str, detail: str) -> str:
            reasons[reason] = reasons.get(reason, 0) + 1
            with self._lock:
                self.usage["failures"][reason] = self.usage["failures"].get(reason, 0) + 1
            return f"{reason}: {detail}"

        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.usage["retries"] += 1
            with self._lock:
                self.usage["http_calls"] += 1
            wait = None
            try:
                resp = self._client.post(url, json=body)
            except httpx.ConnectError as e:
                last = failed("unreachable", f"{type(e).__name__}: {e}")
            except httpx.TimeoutException as e:
                last = failed("timeout", f"{type(e).__name__}: {e}")
            except httpx.TransportError as e:
                last = failed("transport", f"{type(e).__name__}: {e}")
            else:
                if resp.status_code == 200:
                    try:
                        data = resp.json()
                    except ValueError:
                        last = failed("malformed_json", f"200 with a body that is not JSON: "
                                                        f"{resp.text[:120]!r}")
                    else:
                        if _completion_text(data) is not None:
                            return data, None
                        last = failed("malformed_response", f"200 JSON that is not a "
                                                            f"completion: {str(data)[:120]}")
                elif resp.status_code in RETRY_STATUS:
                    last = failed(f"http_{resp.status_code}",
                                  f"HTTP {resp.status_code}: {resp.text[:200]}")
                    ra = resp.headers.get("retry-after")
                    if ra:
                        try:
                            wait = float(ra)
                        except ValueError:
                            wait = None
                else:
                    failed(f"http_{resp.status_code}", "")
                    return None, f"HTTP {resp.status_code} (not retried): {resp.text[:300]}"
            if attempt < self.max_retries:
                if wait is None:
                    wait = min(self.max_backoff_s, self.backoff_s * 2**attempt)
                    wait *= 0.5 + random.random() / 2  # jitter: no synchronized retries
                time.sleep(min(wait, self.max_backoff_s))
        counts = ", ".join(f"{r} x{n}" for r, n in sorted(reasons.items()))
        return None, (f"gave up after {self.max_retries + 1} attempts ({counts}); "
                      f"last: {last}").replace("\n", " ")

    def _to_output(self, data: dict, prompt_text: str, req: GenerationRequest,
                   from_cache: bool) -> GenerationOutput:
        text = _completion_text(data)
        if text is None:  # a cache entry from before responses were checked
            return GenerationOutput(text="", prompt_text=prompt_text, finish_reason="error",
                                    error=f"unexpected response shape: {str(data)[:200]}")
        finish = data["choices"][0].get("finish_reason") or "stop"
        for s in req.stop:  # servers differ on whether the stop string is included
            j = text.find(s) if s else -1
            if j != -1:
                text = text[:j]
        usage = data.get("usage") or {}
        pt, ct = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        if not from_cache:
            with self._lock:
                self.usage["prompt_tokens"] += pt
                self.usage["completion_tokens"] += ct
                if self.price:
                    self.usage["cost_usd"] += (pt * self.price[0] + ct * self.price[1]) / 1e6
        return GenerationOutput(text=text, prompt_text=prompt_text, prompt_tokens=pt,
                                completion_tokens=ct,
                                finish_reason="length" if finish == "length" else "stop",
                                extra={"cached": from_cache})

    # ------------------------------------------------------------------ cache
    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir else None

    def _cache_get(self, key: str) -> dict | None:
        p = self._cache_path(key)
        if p is None or not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None  # a damaged entry is a miss, and is rewritten

    def _cache_put(self, key: str, data: dict) -> None:
        p = self._cache_path(key)
        if p is None:
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, p)


def _completion_text(data: Any) -> str | None:
    """The text of an OpenAI-style (chat) completion body, or None if it is not one."""
    try:
        choice = data["choices"][0]
        text = choice["message"].get("content") if "message" in choice else choice.get("text")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    if text is None and "message" in choice:
        return ""  # a chat message with no content (e.g. only tool calls): empty text
    return text if isinstance(text, str) else None
