"""What one request does: pick the route, generate with its modifier, escalate or not.

The routed system (model "cogumi"): the router (4A) picks a route from the user's last
message; the base generates with that route's modifier; the escalation model (4B) turns
the generation's signals into p_wrong, and at p_wrong >= the chosen threshold (4C) the
request goes to the teacher endpoint. A teacher that is unreachable, slow (over
teacher.json's timeout_s) or answers with an error does not fail the request: the
system's own answer is returned, flagged not escalated, with the reason.

A fixed route (model "cogumi/base", "cogumi/<modifier>") bypasses the router and never
escalates.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from cogumi.serving.bundle import BASE_ROUTE, LOCAL_ROUTE, SYSTEM_MODEL, Bundle, BundleError
from cogumi.serving.engine import Engine, Generation, SamplingParams

GENERATION_SIGNALS = ("mean_logprob", "min_logprob")
"""Signals known only after the local generation (router_margin is known before it)."""


def load_routing(bundle: Bundle) -> tuple[Any, Any]:
    """(router, escalation) through cogumi.routing (4A/4B's own loaders); None for a part
    the bundle does not have."""
    router = escalation = None
    if bundle.router or bundle.escalation:
        try:
            from cogumi.routing import SIGNALS, Escalation, Router
        except ImportError as e:
            raise BundleError(f"{bundle.root}: the bundle has a router/escalation model but "
                              f"cogumi.routing is not importable ({e})") from None
        if bundle.router:
            router = Router.load(bundle.path(bundle.router), base_gguf=bundle.path(bundle.base),
                                 n_threads=bundle.serving.get("n_threads"))
            unknown = set(router.routes) - set(bundle.routes)
            if unknown:
                raise BundleError(f"{bundle.path(bundle.router)}: routes {sorted(unknown)} "
                                  f"have no modifier in the bundle ({', '.join(bundle.routes)})")
        if bundle.escalation:
            escalation = Escalation.load(bundle.path(bundle.escalation))
            unknown = set(escalation.signals) - set(SIGNALS)
            if unknown:
                raise BundleError(f"{bundle.path(bundle.escalation)}: signals "
                                  f"{sorted(unknown)} are not computed when serving (known: "
                                  f"{', '.join(SIGNALS)})")
    return router, escalation


@dataclass
class RouteInfo:
    """What the response says about how it was answered (field "cogumi", headers x-cogumi-*)."""
    route: str
    routed: bool
    confidence: float | None = None
    """The router's margin in [0, 1] (None for a fixed route)."""
    escalated: bool = False
    p_wrong: float | None = None
    threshold: float | None = None
    teacher_error: str | None = None
    """Why an escalation that was decided did not happen (the teacher's failure)."""
    local_usage: dict | None = None

    @property
    def modifier(self) -> str | None:
        return None if self.route == BASE_ROUTE else self.route

    def as_dict(self) -> dict:
        return {"route": self.route, "modifier": self.modifier, "routed": self.routed,
                "confidence": self.confidence, "escalated": self.escalated,
                "p_wrong": self.p_wrong, "threshold": self.threshold,
                "teacher_error": self.teacher_error, "local_usage": self.local_usage}

    def headers(self) -> dict[str, str]:
        h = {"x-cogumi-route": self.route, "x-cogumi-escalated": str(self.escalated).lower()}
        if self.confidence is not None:
            h["x-cogumi-confidence"] = f"{self.confidence:.6f}"
        if self.p_wrong is not None:
            h["x-cogumi-p-wrong"] = f"{self.p_wrong:.6f}"
        return h


@dataclass
class Answer:
    text: str
    finish_reason: str
    usage: dict
    info: RouteInfo
    generation: Generation | None = None
    pieces: list[str] = field(default_factory=list)


class TeacherClient:
    """An OpenAI-compatible chat endpoint (teacher.json), no retries: a failure falls back
    to the local answer at once instead of holding the request."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None,
                 timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        key = os.environ.get(api_key_env or "", "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout_s = timeout_s
        self.client = httpx.AsyncClient(base_url=self.base_url, headers=headers,
                                        timeout=httpx.Timeout(timeout_s))

    async def chat(self, messages: list[dict], params: SamplingParams) -> tuple[str, str, dict]:
        body = {"model": self.model, "messages": messages, "max_tokens": params.max_tokens,
                "temperature": params.temperature, "top_p": params.top_p,
                "seed": params.seed}
        if params.stop:
            body["stop"] = list(params.stop)
        resp = await self.client.post("/chat/completions", json=body)
        if resp.status_code != 200:
            raise TeacherFailed(f"HTTP {resp.status_code}")
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            raise TeacherFailed("malformed response") from None
        return text, choice.get("finish_reason") or "stop", {
            "prompt_tokens": int(usage.get("prompt_tokens", 0)),
            "completion_tokens": int(usage.get("completion_tokens", 0)),
            "total_tokens": int(usage.get("total_tokens", 0))}

    async def aclose(self) -> None:
        await self.client.aclose()


class TeacherFailed(RuntimeError):
    pass


def teacher_client(bundle: Bundle, base_url: str | None) -> TeacherClient | None:
    cfg = bundle.teacher or {}
    url = base_url or cfg.get("base_url")
    if not url or not cfg.get("model"):
        return None
    return TeacherClient(url, cfg["model"], api_key_env=cfg.get("api_key_env"),
                         timeout_s=float(cfg.get("timeout_s", 60)))


def usage_of(gen: Generation) -> dict:
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens}


class System:
    """The bundle being served: engine, router, escalation, teacher."""

    def __init__(self, bundle: Bundle, engine: Engine, *, teacher_url: str | None = None,
                 router: Any = None, escalation: Any = None) -> None:
        self.bundle = bundle
        self.engine = engine
        self.router, self.escalation = router, escalation
        self.threshold = bundle.threshold
        self.teacher = teacher_client(bundle, teacher_url)
        self._router_lock = threading.Lock()  # a router's model need not be thread-safe
        self.stop = tuple(bundle.serving.get("stop", ()))
        self.default_max_tokens = int(bundle.serving.get("max_tokens", 256))

    @property
    def escalates(self) -> bool:
        return self.escalation is not None and self.threshold is not None

    @property
    def decides_after_generation(self) -> bool:
        """Whether the escalation decision needs the generation (then a routed stream is
        sent after it, since text already sent cannot be taken back)."""
        return self.escalates and bool(set(self.escalation.signals) & set(GENERATION_SIGNALS))

    def resolve(self, model: str) -> tuple[str | None, bool]:
        """(fixed route or None, routed) for a model name; KeyError when unknown.
        `cogumi/local` is routed like `cogumi` (escalation_allowed says it never escalates)."""
        if model in (SYSTEM_MODEL, f"{SYSTEM_MODEL}/{LOCAL_ROUTE}"):
            if self.router is None:  # a bundle without a router serves its base
                return BASE_ROUTE, True
            return None, True
        prefix = SYSTEM_MODEL + "/"
        if model.startswith(prefix) and model[len(prefix):] in self.engine.routes:
            return model[len(prefix):], False
        raise KeyError(model)

    def escalation_allowed(self, model: str) -> bool:
        """Whether a request for `model` may go to the teacher: the routed system only."""
        return model == SYSTEM_MODEL and self.escalates

    def route(self, query: str) -> tuple[str, float | None]:
        if self.router is None:
            return BASE_ROUTE, None
        with self._router_lock:
            route, margin = self.router.route(query)
        return route, float(margin)

    def p_wrong(self, gen: Generation | None, margin: float | None) -> float:
        """4B's model over the signals computed as 4B computed them (serving_signals: the
        chosen tokens' log-probabilities of the greedy generation, the router's margin)."""
        from cogumi.routing import serving_signals
        values = serving_signals(gen.token_logprobs if gen is not None else None,
                                 margin if margin is not None else 1.0)
        return float(self.escalation.p_wrong({s: values[s] for s in self.escalation.signals}))

    async def escalate(self, messages: list[dict], params: SamplingParams, info: RouteInfo
                       ) -> tuple[str, str, dict] | None:
        """The teacher's answer, or None with info.teacher_error saying why not."""
        if self.teacher is None:
            info.teacher_error = "no teacher endpoint configured (teacher.json base_url or " \
                                 "--teacher-url)"
            return None
        t0 = time.monotonic()
        try:
            return await self.teacher.chat(messages, params)
        except httpx.TimeoutException:
            info.teacher_error = f"timeout after {time.monotonic() - t0:.1f} s"
        except httpx.TransportError as e:
            info.teacher_error = f"unreachable ({type(e).__name__})"
        except TeacherFailed as e:
            info.teacher_error = str(e)
        return None

    async def aclose(self) -> None:
        if self.teacher is not None:
            await self.teacher.aclose()
