"""generate_examples: ask the teacher, keep what the verifier accepts, account for the rest.

Every request ends in exactly one of three lists: ``kept`` (the verifier accepted the
answer), ``rejected`` (with the reason: the verifier's, or ``teacher_error`` for an answer
that never came back under ``on_failure="record"``), ``not_sent`` (the budget stopped before
it was sent). Answers come from the cache when it holds them (no request, no cost);
otherwise they are sent ``concurrency`` at a time, each under a reservation of its worst
case against the budget (cogumi.distillation.budget), and stored in the cache when complete.

Retries, backoff and the failure count by reason are the backend's (the OpenAI-compatible
backend: cogumi.evaluation.backends.openai_backend); a teacher built by cogumi.teacher raises
``EndpointFailed`` after its retry budget, which ends the generation with that one line and
leaves the cache holding only the complete answers received before it.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cogumi.evaluation.settings import GenerationOutput, GenerationRequest

from .budget import Budget, cost_usd, prompt_token_bound
from .cache import ExampleCache, request_key

REJECT_REASONS = {
    "teacher_error": "the teacher returned no answer after its retries (the backend's error)",
    "empty_response": "the teacher's answer was empty",
    "no_answer": "no final answer (math, letter), code or call list could be extracted",
    "wrong_answer": "the extracted answer is not the reference's (math-verify, letter, BFCL AST)",
    "unverified_verdict": "code passed only by its own report or outside namespace isolation",
    "no_verifier": "the request's check names no known verifier",
    "truncated": "the answer hit max_tokens (finish_reason length) and was not accepted",
}
"""Why an answer was rejected; code adds the sandbox's own reasons (failed, timeout, ...)."""

DEFAULTS = {"max_tokens": 512, "temperature": 0.0, "top_p": 1.0, "seed": 0}

Verifier = Callable[[Sequence[tuple[dict[str, Any], str]]], list]


@dataclass
class GenerationResult:
    kept: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    not_sent: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    budget_stopped: bool = False

    @property
    def accounted(self) -> int:
        return len(self.kept) + len(self.rejected) + len(self.not_sent)

    def reasons(self) -> dict[str, int]:
        return dict(Counter(r["reason"] for r in self.rejected))

    def to_dict(self) -> dict[str, Any]:
        return {"kept": len(self.kept), "rejected": len(self.rejected),
                "not_sent": len(self.not_sent), "reject_reasons": self.reasons(),
                "usage": self.usage, "budget": self.budget,
                "budget_stopped": self.budget_stopped}


def validate_requests(requests: Sequence[dict[str, Any]], where: str = "requests") -> None:
    """Each request has a unique string id, a domain, a prompt and a check (one line if not)."""
    seen: set[str] = set()
    for n, r in enumerate(requests):
        if not isinstance(r, dict):
            raise ValueError(f"{where}[{n}]: a request is a dict, got {type(r).__name__}")
        for key in ("id", "domain", "prompt"):
            if not isinstance(r.get(key), str) or not r[key]:
                raise ValueError(f"{where}[{n}]: needs a non-empty string {key!r}")
        if not isinstance(r.get("check"), dict):
            raise ValueError(f"{where}[{n}] ({r['id']}): needs a dict 'check'")
        if r["id"] in seen:
            raise ValueError(f"{where}[{n}]: duplicate id {r['id']!r}")
        seen.add(r["id"])


def to_generation_request(request: dict[str, Any], defaults: dict[str, Any] | None = None,
                          stop: Sequence[str] = ()) -> GenerationRequest:
    """The chat a request becomes: an optional ``system`` turn, then ``prompt`` as the user
    turn; ``max_tokens``, ``temperature``, ``top_p`` and ``seed`` from the request, else the
    defaults."""
    d = {**DEFAULTS, **(defaults or {})}
    messages = ([{"role": "system", "content": request["system"]}] if request.get("system")
                else []) + [{"role": "user", "content": request["prompt"]}]
    return GenerationRequest(messages=tuple(messages),
                             max_new_tokens=int(request.get("max_tokens", d["max_tokens"])),
                             temperature=float(request.get("temperature", d["temperature"])),
                             top_p=float(request.get("top_p", d["top_p"])),
                             seed=int(request.get("seed", d["seed"])), stop=tuple(stop))


def generate_examples(backend, requests: Sequence[dict[str, Any]], *, verifier: Verifier,
                      cache_dir: str | Path | None, budget: Budget | None = None,
                      prices: tuple[float, float] = (0.0, 0.0),
                      defaults: dict[str, Any] | None = None, concurrency: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> GenerationResult:
    """The teacher's verified answers to ``requests`` (see the module docstring).

    ``backend``: any cogumi generation backend (``generate``, ``identity``); its
    ``model_digest`` keys the cache. ``prices``: (input, output) dollars per million tokens.
    ``concurrency``: requests in flight at once (default: the backend's ``concurrency``, else
    1). ``progress(done, total)`` is called as answers arrive.
    """
    validate_requests(requests)
    budget = budget if budget is not None else Budget()
    cache = ExampleCache(cache_dir)
    digest = backend.identity()["model_digest"]
    concurrency = max(1, int(concurrency or getattr(backend, "concurrency", 1) or 1))
    before = _backend_usage(backend)
    answers: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    not_sent: list[dict[str, Any]] = []
    usage = Counter()
    lock = threading.Lock()
    gen = {r["id"]: to_generation_request(r, defaults) for r in requests}
    keys = {rid: request_key(digest, g) for rid, g in gen.items()}

    def send(rid: str, reserved: tuple[int, float]) -> None:
        out: GenerationOutput = backend.generate([gen[rid]])[0]
        if out.error or not isinstance(out.text, str):
            budget.settle(*reserved, 0, 0.0)
            with lock:
                errors[rid] = str(out.error or "the backend returned no text")
            return
        pt, ct = int(out.prompt_tokens), int(out.completion_tokens)
        usd = cost_usd(prices, pt, ct)
        budget.settle(*reserved, pt + ct, usd)
        answer = {"text": out.text, "prompt_tokens": pt, "completion_tokens": ct,
                  "finish_reason": out.finish_reason, "model_digest": digest}
        cache.put(keys[rid], answer)
        with lock:
            answers[rid] = answer
            usage["sent"] += 1
            usage["prompt_tokens"] += pt
            usage["completion_tokens"] += ct
            usage["cost_usd"] += usd

    done = 0
    pending = []
    for r in requests:
        hit = cache.get(keys[r["id"]])
        if hit is not None:
            answers[r["id"]] = hit
            usage["cache_hits"] += 1
            done += 1
        else:
            pending.append(r)
    if progress and done:
        progress(done, len(requests))

    stopped = False
    in_flight: dict[Future, str] = {}
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        try:
            queue = list(pending)
            while queue or in_flight:
                while queue and not stopped and len(in_flight) < concurrency:
                    r = queue[0]
                    g = gen[r["id"]]
                    tokens = prompt_token_bound(list(g.messages), None) + g.max_new_tokens
                    usd = cost_usd(prices, tokens - g.max_new_tokens, g.max_new_tokens)
                    if not budget.try_reserve(tokens, usd):
                        if in_flight:
                            break  # what is in flight may cost less than reserved: wait
                        stopped = True
                        break
                    queue.pop(0)
                    in_flight[pool.submit(send, r["id"], (tokens, usd))] = r["id"]
                if stopped and not in_flight:
                    not_sent.extend(queue)
                    queue = []
                    break
                if not in_flight:
                    continue
                finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for f in finished:
                    in_flight.pop(f)
                    f.result()  # EndpointFailed (a teacher's exhausted retries) ends here
                    done += 1
                    if progress:
                        progress(done, len(requests))
        except BaseException:
            for f in in_flight:
                f.cancel()
            raise

    result = GenerationResult(not_sent=[{"id": r["id"], "domain": r["domain"],
                                         "reason": "budget"} for r in not_sent],
                              budget_stopped=stopped)
    judged = [r for r in requests if r["id"] in answers]
    verdicts = verifier([(r, answers[r["id"]]["text"]) for r in judged]) if judged else []
    if len(verdicts) != len(judged):
        raise RuntimeError(f"verifier returned {len(verdicts)} verdicts for {len(judged)} answers")
    verdict_of = {r["id"]: v for r, v in zip(judged, verdicts, strict=True)}
    for r in requests:
        rid = r["id"]
        if rid in verdict_of:
            v, a = verdict_of[rid], answers[rid]
            if v.ok:
                result.kept.append({"id": rid, "domain": r["domain"],
                                    "instruction": r.get("instruction", r["prompt"]),
                                    "response": a["text"], "source": "teacher",
                                    "verified_by": v.verified_by})
            else:
                reason = ("truncated" if a.get("finish_reason") == "length"
                          and v.reason in ("no_answer", "empty_response") else v.reason)
                result.rejected.append({"id": rid, "domain": r["domain"], "reason": reason,
                                        "detail": v.detail, "response": a["text"]})
        elif rid in errors:
            result.rejected.append({"id": rid, "domain": r["domain"], "reason": "teacher_error",
                                    "detail": errors[rid][:300], "response": ""})
    after = _backend_usage(backend)
    result.usage = {
        "requests": len(requests), "cache_hits": usage["cache_hits"], "sent": usage["sent"],
        "errors": len(errors), "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "cost_usd": float(usage["cost_usd"]), "prices_usd_per_mtok": list(prices),
        # The backend's own counts of HTTP calls, retries and failed attempts by reason.
        "http_calls": after.get("http_calls", 0) - before.get("http_calls", 0),
        "retries": after.get("retries", 0) - before.get("retries", 0),
        "failures": {k: n - before.get("failures", {}).get(k, 0)
                     for k, n in after.get("failures", {}).items()
                     if n - before.get("failures", {}).get(k, 0)},
    }
    result.budget = budget.to_dict()
    if result.accounted != len(requests):  # pragma: no cover - a bug, never data
        raise RuntimeError(f"accounted for {result.accounted} of {len(requests)} requests")
    return result


def _backend_usage(backend) -> dict[str, Any]:
    u = getattr(backend, "usage", None) or {}
    return {"http_calls": u.get("http_calls", 0), "retries": u.get("retries", 0),
            "failures": dict(u.get("failures", {}))}
