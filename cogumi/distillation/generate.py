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

from cogumi.evaluation.backends.base import Backend
from cogumi.evaluation.settings import GenerationOutput, GenerationRequest

from .budget import Budget, BudgetExceeded, cost_usd, prompt_token_bound
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


@dataclass
class Answers:
    """The teacher's raw answers to requests (no verification): by id, the answer dict
    (text, tokens, finish_reason); the errors by id; the requests the budget kept back."""
    answers: dict[str, dict[str, Any]]
    errors: dict[str, str]
    not_sent: list[dict[str, Any]]
    usage: dict[str, Any]
    budget: dict[str, Any]
    budget_stopped: bool


def ask_teacher(backend, requests: Sequence[dict[str, Any]], *, cache_dir: str | Path | None,
                budget: Budget | None = None, prices: tuple[float, float] = (0.0, 0.0),
                defaults: dict[str, Any] | None = None, concurrency: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> Answers:
    """The teacher's answers to ``requests``, from the cache or sent under the budget (the
    part of :func:`generate_examples` before verification; cluster labels use it alone)."""
    validate_requests(requests)
    gen = {r["id"]: to_generation_request(r, defaults) for r in requests}
    return _collect(backend, gen, cache=ExampleCache(cache_dir),
                    budget=budget if budget is not None else Budget(), prices=prices,
                    concurrency=concurrency, progress=progress,
                    index={r["id"]: r for r in requests})


def _collect(backend, gen: dict[str, GenerationRequest], *, cache: ExampleCache, budget: Budget,
             prices: tuple[float, float], concurrency: int | None,
             progress: Callable[[int, int], None] | None, index: dict[str, Any]) -> Answers:
    digest = backend.identity()["model_digest"]
    concurrency = max(1, int(concurrency or getattr(backend, "concurrency", 1) or 1))
    before = _backend_usage(backend)
    answers: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    not_sent: list[Any] = []
    usage: Counter = Counter()
    lock = threading.Lock()
    keys = {rid: request_key(digest, g) for rid, g in gen.items()}

    def send(rid: str, reserved: tuple[int, float]) -> None:
        try:
            out: GenerationOutput = backend.generate([gen[rid]])[0]
        except BaseException:
            budget.settle(*reserved, 0, 0.0)
            raise
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
    queue = []
    for rid in gen:
        hit = cache.get(keys[rid])
        if hit is not None:
            answers[rid] = hit
            usage["cache_hits"] += 1
            done += 1
        else:
            queue.append(rid)
    if progress and done:
        progress(done, len(gen))

    stopped = False
    in_flight: dict[Future, str] = {}
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        try:
            while queue or in_flight:
                while queue and not stopped and len(in_flight) < concurrency:
                    g = gen[queue[0]]
                    tokens = prompt_token_bound(
                        list(g.messages) if g.messages is not None else None, g.prompt
                    ) + g.max_new_tokens
                    usd = cost_usd(prices, tokens - g.max_new_tokens, g.max_new_tokens)
                    if not budget.try_reserve(tokens, usd):
                        # What is in flight may cost less than reserved: wait for it first.
                        stopped = not in_flight
                        break
                    rid = queue.pop(0)
                    in_flight[pool.submit(send, rid, (tokens, usd))] = rid
                if stopped:
                    not_sent.extend(index[rid] for rid in queue)
                    queue = []
                if not in_flight:
                    continue
                finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for f in finished:
                    in_flight.pop(f)
                    f.result()  # EndpointFailed (a teacher's exhausted retries) ends here
                    done += 1
                    if progress:
                        progress(done, len(gen))
        except BaseException:
            for f in in_flight:
                f.cancel()
            raise

    after = _backend_usage(backend)
    usage_out = {
        "requests": len(gen), "cache_hits": usage["cache_hits"], "sent": usage["sent"],
        "errors": len(errors), "not_sent": len(not_sent),
        "prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
        "cost_usd": float(usage["cost_usd"]), "prices_usd_per_mtok": list(prices),
        # The backend's own counts of HTTP calls, retries and failed attempts by reason.
        "http_calls": after["http_calls"] - before["http_calls"],
        "retries": after["retries"] - before["retries"],
        "failures": {k: n - before["failures"].get(k, 0) for k, n in after["failures"].items()
                     if n - before["failures"].get(k, 0)},
    }
    return Answers(answers, errors, not_sent, usage_out, budget.to_dict(), stopped)


class BudgetedTeacher(Backend):
    """The teacher as a :class:`Backend` whose every generation goes through the same
    content cache and budget as :func:`generate_examples`, so that scoring the teacher on a
    suite (``cogumi.evaluation.evaluate``) is cached and costed the same way. A request the
    budget cannot take raises :class:`BudgetExceeded` (a partial suite measures nothing).
    ``usage`` sums every call's accounting."""

    name = "teacher"

    def __init__(self, backend, *, cache_dir: str | Path | None, budget: Budget,
                 prices: tuple[float, float] = (0.0, 0.0), concurrency: int | None = None):
        self.backend, self.cache = backend, ExampleCache(cache_dir)
        self.budget, self.prices, self.concurrency = budget, prices, concurrency
        self.usage: Counter = Counter()
        self.failures: Counter = Counter()

    def render(self, messages, answer_prefix=None):
        return self.backend.render(messages, answer_prefix)

    def identity(self) -> dict[str, Any]:
        return self.backend.identity()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutput]:
        gen = {str(i): r for i, r in enumerate(requests)}
        got = _collect(self.backend, gen, cache=self.cache, budget=self.budget,
                       prices=self.prices, concurrency=self.concurrency, progress=None,
                       index={k: k for k in gen})
        for k in ("requests", "cache_hits", "sent", "errors", "prompt_tokens",
                  "completion_tokens", "http_calls", "retries"):
            self.usage[k] += got.usage[k]
        self.usage["cost_usd"] += got.usage["cost_usd"]
        self.failures.update(got.usage["failures"])
        if got.budget_stopped:
            raise BudgetExceeded(
                f"the teacher budget ({_limits(self.budget)}) cannot take {len(got.not_sent)} "
                f"more requests of the teacher's evaluation; spent ${self.budget.spent_usd:.4f}, "
                f"{self.budget.spent_tokens} tokens")
        outs = []
        for k, r in gen.items():
            prompt_text = (self.render(r.messages) if r.messages is not None else r.prompt)
            if k in got.errors:
                outs.append(GenerationOutput(text="", prompt_text=prompt_text,
                                             finish_reason="error", error=got.errors[k]))
                continue
            a = got.answers[k]
            outs.append(GenerationOutput(
                text=a["text"], prompt_text=prompt_text, prompt_tokens=a["prompt_tokens"],
                completion_tokens=a["completion_tokens"],
                finish_reason="length" if a.get("finish_reason") == "length" else "stop"))
        return outs


def _limits(budget: Budget) -> str:
    parts = []
    if budget.max_usd is not None:
        parts.append(f"${budget.max_usd:g}")
    if budget.max_tokens is not None:
        parts.append(f"{budget.max_tokens} tokens")
    return " and ".join(parts) or "no limit"


def generate_examples(backend, requests: Sequence[dict[str, Any]], *, verifier: Verifier,
                      cache_dir: str | Path | None, budget: Budget | None = None,
                      prices: tuple[float, float] = (0.0, 0.0),
                      defaults: dict[str, Any] | None = None, concurrency: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> GenerationResult:
    """The teacher's verified answers to ``requests`` (see the module docstring).

    ``backend``: any cogumi generation backend (``generate``, ``identity``); its
    ``model_digest`` keys the cache. ``prices``: (input, output) dollars per million tokens.
    ``budget``: stops before a request whose worst case would exceed it (default: none).
    ``defaults``: max_tokens, temperature, top_p, seed for requests that do not set them.
    ``concurrency``: requests in flight at once (default: the backend's ``concurrency``, else
    1). ``progress(done, total)`` is called as answers arrive.
    """
    got = ask_teacher(backend, requests, cache_dir=cache_dir, budget=budget, prices=prices,
                      defaults=defaults, concurrency=concurrency, progress=progress)
    answers, errors = got.answers, got.errors
    result = GenerationResult(not_sent=[{"id": r["id"], "domain": r["domain"],
                                         "reason": "budget"} for r in got.not_sent],
                              usage=got.usage, budget=got.budget,
                              budget_stopped=got.budget_stopped)
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
                kept = {"id": rid, "domain": r["domain"],
                        "instruction": r.get("instruction", r["prompt"]),
                        "response": a["text"], "source": "teacher",
                        "verified_by": v.verified_by}
                if r.get("system"):
                    kept["system"] = r["system"]  # cogumi.training.sft.messages_for reads it
                result.kept.append(kept)
            else:
                reason = ("truncated" if a.get("finish_reason") == "length"
                          and v.reason in ("no_answer", "empty_response") else v.reason)
                result.rejected.append({"id": rid, "domain": r["domain"], "reason": reason,
                                        "detail": v.detail, "response": a["text"]})
        elif rid in errors:
            result.rejected.append({"id": rid, "domain": r["domain"], "reason": "teacher_error",
                                    "detail": errors[rid][:300], "response": ""})
    if result.accounted != len(requests):  # pragma: no cover - a bug, never data
        raise RuntimeError(f"accounted for {result.accounted} of {len(requests)} requests")
    return result


def _backend_usage(backend) -> dict[str, Any]:
    u = getattr(backend, "usage", None) or {}
    return {"http_calls": u.get("http_calls", 0), "retries": u.get("retries", 0),
            "failures": dict(u.get("failures", {}))}
