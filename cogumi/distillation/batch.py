"""OpenAI Batch API files for hosted teachers: the same requests, sent as one upload.

:func:`write_batch_file` writes the input file the Batch API takes: one JSON request per
line, ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``, the body
being the one cogumi's OpenAI-compatible backend would send for that request; ``custom_id``
is the request's id (unique; the API matches results by it). Beside it, ``<file>.batch.json``
states what to create the batch with (endpoint, ``completion_window`` "24h") and the counts.
The API takes at most 50,000 requests and 200 MB per file; a larger set is refused in one
line (split it).

:func:`read_batch_output` reads the output (or error) file the API returns: one line per
request, ``{"custom_id", "response": {"status_code", "body"}, "error"}``.
:func:`import_batch_output` stores each complete answer in the distillation cache under the
key the live path uses, so :func:`cogumi.distillation.generate_examples` run afterwards finds
every answer there (no request sent) and verifies them as usual; the batch's tokens are
priced at the batch price table the caller gives.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cogumi.artifacts import atomic_write_text
from cogumi.evaluation.backends.openai_backend import _completion_text

from .budget import cost_usd
from .cache import ExampleCache, request_key
from .generate import to_generation_request, validate_requests

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024


class BatchFileError(ValueError):
    """A batch file that cannot be written or read as the Batch API states it; one line."""


def batch_body(request: dict[str, Any], model: str, defaults: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    g = to_generation_request(request, defaults)
    body: dict[str, Any] = {"model": model, "messages": list(g.messages),
                            "max_tokens": g.max_new_tokens, "temperature": g.temperature,
                            "top_p": g.top_p, "seed": g.seed}
    if g.stop:
        body["stop"] = list(g.stop)
    return body


def write_batch_file(requests: Sequence[dict[str, Any]], path: str | Path, *, model: str,
                     defaults: dict[str, Any] | None = None) -> Path:
    validate_requests(requests)
    if len(requests) > MAX_REQUESTS:
        raise BatchFileError(f"{path}: {len(requests)} requests; the Batch API takes at most "
                             f"{MAX_REQUESTS} per file")
    lines = [json.dumps({"custom_id": r["id"], "method": "POST", "url": ENDPOINT,
                         "body": batch_body(r, model, defaults)}, ensure_ascii=False)
             for r in requests]
    text = "".join(line + "\n" for line in lines)
    if len(text.encode()) > MAX_BYTES:
        raise BatchFileError(f"{path}: {len(text.encode())} bytes; the Batch API takes at most "
                             f"{MAX_BYTES} per file")
    path = Path(path)
    atomic_write_text(path, text)
    atomic_write_text(path.with_name(path.name + ".batch.json"), json.dumps({
        "input_file": path.name, "endpoint": ENDPOINT, "completion_window": COMPLETION_WINDOW,
        "requests": len(requests), "model": model}, indent=2))
    return path


def read_batch_output(path: str | Path) -> dict[str, dict[str, Any]]:
    """custom_id -> {"text", "prompt_tokens", "completion_tokens", "finish_reason"} for a
    complete answer, or {"error": why} for a failed one; a malformed line is one
    BatchFileError naming ``file:line``."""
    path = Path(path)
    out: dict[str, dict[str, Any]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise BatchFileError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        cid = rec.get("custom_id") if isinstance(rec, dict) else None
        if not isinstance(cid, str):
            raise BatchFileError(f"{path}:{lineno}: no string custom_id")
        if cid in out:
            raise BatchFileError(f"{path}:{lineno}: custom_id {cid!r} repeats")
        resp = rec.get("response") or {}
        body = resp.get("body") if isinstance(resp, dict) else None
        text = _completion_text(body) if body is not None else None
        if rec.get("error") or resp.get("status_code") != 200 or text is None:
            why = rec.get("error") or f"status {resp.get('status_code')}: {str(body)[:200]}"
            out[cid] = {"error": json.dumps(why) if not isinstance(why, str) else why}
            continue
        usage = body.get("usage") or {}
        out[cid] = {"text": text, "prompt_tokens": int(usage.get("prompt_tokens", 0)),
                    "completion_tokens": int(usage.get("completion_tokens", 0)),
                    "finish_reason": body["choices"][0].get("finish_reason") or "stop"}
    return out


def import_batch_output(path: str | Path, requests: Sequence[dict[str, Any]], *,
                        cache_dir: str | Path, model_digest: str,
                        batch_prices: tuple[float, float],
                        defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Store a batch's complete answers in the cache; returns what they cost and what failed.
    An answer the cache holds already (a second import) is neither stored nor costed again.
    ``model_digest``: the live backend's (``backend.identity()["model_digest"]``), so the
    live path finds these answers."""
    validate_requests(requests)
    results = read_batch_output(path)
    by_id = {r["id"]: r for r in requests}
    unknown = sorted(set(results) - set(by_id))
    if unknown:
        raise BatchFileError(f"{path}: custom_id {unknown[0]!r} is not one of the requests "
                             f"({len(unknown)} unknown)")
    cache = ExampleCache(cache_dir)
    summary = {"imported": 0, "already_cached": 0, "failed": {}, "missing": sorted(set(by_id) - set(results)),
               "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
               "batch_prices_usd_per_mtok": list(batch_prices)}
    for cid, res in results.items():
        if "error" in res:
            summary["failed"][cid] = res["error"][:300]
            continue
        key = request_key(model_digest, to_generation_request(by_id[cid], defaults))
        if cache.get(key) is not None:  # imported before (a rerun): neither stored nor costed
            summary["already_cached"] += 1
            continue
        cache.put(key, {**res, "model_digest": model_digest, "via": "batch"})
        summary["imported"] += 1
        summary["prompt_tokens"] += res["prompt_tokens"]
        summary["completion_tokens"] += res["completion_tokens"]
        summary["cost_usd"] += cost_usd(batch_prices, res["prompt_tokens"],
                                        res["completion_tokens"])
    return summary
