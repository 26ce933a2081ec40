"""`cogumi serve BUNDLE`: the OpenAI-compatible server of the whole system (FastAPI).

Routes: POST /v1/chat/completions and /v1/completions (server-sent events with
"stream": true), GET /v1/models, /health, /metrics (Prometheus text format), and the chat
page at /. Errors are OpenAI-shaped: {"error": {"message", "type", "param", "code"}} with a
4xx status for what the client sent (malformed JSON, invalid parameters, an unknown model,
a prompt longer than the context); the server keeps serving after any of them.

Every answer says how it was answered: the response's "cogumi" field (and every stream
chunk's) holds route, modifier, routed, confidence, escalated, p_wrong, threshold and
teacher_error, and the x-cogumi-route / x-cogumi-escalated / x-cogumi-confidence headers
repeat them. "usage" is the answering model's token count, as the OpenAI API reports it
(the local generation's count is cogumi.local_usage when the teacher answered).

A streamed request on the routed system whose escalation model reads the generation
(mean/min log-probability) is sent once its generation is done and the decision made:
text already sent could not be taken back if the teacher then answers. Streams of a fixed
route, or of a system that decides before generating, are sent token by token as they
are generated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from cogumi.serving.bundle import Bundle, load_bundle
from cogumi.serving.engine import Engine, Generation, PromptTooLong, SamplingParams
from cogumi.serving.system import Answer, RouteInfo, System, load_routing, usage_of

STATIC = Path(__file__).with_name("static")


# ---------------------------------------------------------------------- request bodies
class _Body(BaseModel):
    # Fields of the OpenAI API this server does not use (user, metadata, ...) are accepted
    # and ignored, as clients send them.
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    n: int = Field(default=1, ge=1, le=1)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(_Body):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Body):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("one prompt per request")
        return v

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


@dataclass
class Plan:
    kind: str
    req: Any
    params: SamplingParams
    ids: list[int]
    route: str
    info: RouteInfo
    answer: Answer | None = None
    """Set when the teacher answered before any local generation."""

    def waits_for_generation(self, system: System) -> bool:
        # threshold: set only where the request may escalate (the routed system "cogumi")
        return self.info.threshold is not None and system.decides_after_generation


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type_, param, code)


def _error_response(status: int, message: str, type_: str = "invalid_request_error",
                    param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {
        "message": message, "type": type_, "param": param, "code": code}})


# ---------------------------------------------------------------------- metrics
class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("cogumi_requests", "Answered requests", ["endpoint", "route",
                                "escalated", "stream"], registry=r)
        self.errors = Counter("cogumi_request_errors", "Requests answered with an error",
                              ["status"], registry=r)
        self.latency = Histogram("cogumi_request_latency_seconds",
                                 "Time from request to the last byte of the answer",
                                 ["endpoint"], registry=r,
                                 buckets=(.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120))
        self.tokens = Counter("cogumi_completion_tokens", "Generated tokens", ["answered_by"],
                              registry=r)
        self.escalations = Counter("cogumi_escalations", "Requests whose p_wrong reached the "
                                   "threshold, by outcome", ["outcome"], registry=r)
        self.cancelled = Counter("cogumi_streams_cancelled",
                                 "Streams whose client went away before the end", registry=r)
        self.inflight = Gauge("cogumi_requests_in_flight", "Requests being answered",
                              registry=r)


# ---------------------------------------------------------------------- the app
def create_app(bundle: Bundle | str | Path, *, teacher_url: str | None = None,
               n_threads: int | None = None) -> FastAPI:
    """The server over a bundle; loads the base, its modifiers, the router and the
    escalation model once, here."""
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    engine = Engine(bundle.path(bundle.base),
                    {n: bundle.path(m.file) for n, m in bundle.modifiers.items()},
                    n_ctx=int(bundle.serving.get("n_ctx", 2048)),
                    n_threads=n_threads or bundle.serving.get("n_threads"),
                    chat_template=bundle.serving.get("chat_template"))
    router, escalation = load_routing(bundle)
    system = System(bundle, engine, teacher_url=teacher_url, router=router,
                    escalation=escalation)
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await system.aclose()

    app = FastAPI(title="cogumi", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.system, app.state.metrics = system, metrics

    # -------------------------------------------------------------- errors
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        metrics.errors.labels(str(e.status)).inc()
        return _error_response(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        metrics.errors.labels("400").inc()
        first = e.errors()[0] if e.errors() else {}
        if first.get("type") == "json_invalid":
            return _error_response(400, f"malformed JSON in the request body: "
                                   f"{first.get('ctx', {}).get('error', 'invalid JSON')}",
                                   code="invalid_json")
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        return _error_response(400, f"{param or 'body'}: {first.get('msg', 'invalid')}",
                               param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        metrics.errors.labels(str(e.status_code)).inc()
        return _error_response(e.status_code, str(e.detail),
                               code="not_found" if e.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):  # pragma: no cover - a bug
        metrics.errors.labels("500").inc()
        return _error_response(500, f"internal error: {type(e).__name__}: {e}",
                               type_="server_error")

    # -------------------------------------------------------------- plain routes
    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    async def health():
        return {"status": "ok", "routes": list(engine.routes),
                "router": system.router is not None, "escalation": system.escalates,
                "teacher": system.teacher.base_url if system.teacher else None,
                "busy": engine.busy}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        created = int(bundle.path(bundle.base).stat().st_mtime)
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "cogumi"}
            for name in bundle.model_names]}

    # -------------------------------------------------------------- generation
    def sampling(req: _Body, default_max: int) -> SamplingParams:
        max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
        return SamplingParams(max_tokens=max_tokens or default_max,
                              temperature=req.temperature, top_p=req.top_p,
                              seed=req.seed if req.seed is not None else 0,
                              stop=tuple(dict.fromkeys((*req.stops(), *system.stop))))

    def resolve(model: str) -> tuple[str | None, bool]:
        try:
            return system.resolve(model)
        except KeyError:
            raise ApiError(404, f"The model `{model}` does not exist; this server has "
                           f"{', '.join(bundle.model_names)}", param="model",
                           code="model_not_found") from None

    def prompt_ids(kind: str, req) -> list[int]:
        ids = (engine.chat_prompt([{"role": "system" if m.role == "developer" else m.role,
                                    "content": m.text()} for m in req.messages])
               if kind == "chat" else engine.text_prompt(req.text()))
        try:
            engine.check_room(ids)
        except PromptTooLong as e:
            raise ApiError(400, f"{e}: shorten it", param="messages" if kind == "chat"
                           else "prompt", code="context_length_exceeded") from None
        return ids

    async def teacher_answer(kind: str, req, params: SamplingParams, info: RouteInfo
                             ) -> Answer | None:
        messages = ([{"role": m.role, "content": m.text()} for m in req.messages]
                    if kind == "chat" else [{"role": "user", "content": req.text()}])
        got = await system.escalate(messages, params, info)
        if got is None:
            metrics.escalations.labels("teacher_failed").inc()
            return None
        metrics.escalations.labels("teacher_answered").inc()
        info.escalated = True
        text, finish, usage = got
        metrics.tokens.labels("teacher").inc(usage["completion_tokens"])
        return Answer(text=text, finish_reason=finish, usage=usage, info=info)

    async def prepare(kind: str, req) -> Plan:
        """Everything before the local generation: the model name, parameters, prompt
        (4xx errors), the route, and an escalation decided from the router alone."""
        fixed, routed = resolve(req.model)
        params = sampling(req, system.default_max_tokens if kind == "chat" else 16)
        ids = prompt_ids(kind, req)
        if fixed is None:
            query = (next((m.text() for m in reversed(req.messages) if m.role == "user"),
                          req.messages[-1].text()) if kind == "chat" else req.text())
            route, margin = await anyio.to_thread.run_sync(system.route, query)
        else:
            route, margin = fixed, None
        escalating = system.escalation_allowed(req.model)
        info = RouteInfo(route=route, routed=routed, confidence=margin,
                         threshold=system.threshold if escalating else None)
        plan = Plan(kind, req, params, ids, route, info)
        if escalating and not system.decides_after_generation:
            info.p_wrong = system.p_wrong(None, margin)
            if info.p_wrong >= system.threshold:
                plan.answer = await teacher_answer(kind, req, params, info)
        return plan

    async def conclude(plan: Plan, gen: Generation) -> Answer:
        """After the local generation: the escalation decided from it, if it is."""
        info = plan.info
        info.local_usage = usage_of(gen)
        metrics.tokens.labels("local").inc(gen.completion_tokens)
        if plan.waits_for_generation(system):
            info.p_wrong = system.p_wrong(gen, info.confidence)
            if info.p_wrong >= system.threshold:
                got = await teacher_answer(plan.kind, plan.req, plan.params, info)
                if got is not None:
                    got.generation = gen
                    return got
        return Answer(text=gen.text, finish_reason=gen.finish_reason, usage=usage_of(gen),
                      info=info, generation=gen)

    def completion_body(kind: str, req, ans: Answer, rid: str, created: int) -> dict:
        if kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": ans.text},
                      "finish_reason": ans.finish_reason, "logprobs": None}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": ans.text, "finish_reason": ans.finish_reason,
                      "logprobs": None}
            obj = "text_completion"
        return {"id": rid, "object": obj, "created": created, "model": req.model,
                "choices": [choice], "usage": ans.usage, "cogumi": ans.info.as_dict()}

    async def handle(kind: str, req) -> Response:
        t0 = time.monotonic()
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        endpoint = "chat" if kind == "chat" else "completions"
        plan = await prepare(kind, req)
        if req.stream:
            return await stream(plan, rid, created, t0, endpoint)
        metrics.inflight.inc()
        try:
            ans = plan.answer
            if ans is None:
                gen = await anyio.to_thread.run_sync(engine.generate, plan.route, plan.ids,
                                                     plan.params)
                ans = await conclude(plan, gen)
            metrics.requests.labels(endpoint, ans.info.route, str(ans.info.escalated),
                                    "false").inc()
            metrics.latency.labels(endpoint).observe(time.monotonic() - t0)
            return JSONResponse(completion_body(kind, req, ans, rid, created),
                                headers=ans.info.headers())
        finally:
            metrics.inflight.dec()

    def chunk(kind: str, req, rid: str, created: int, text: str | None,
              finish: str | None, info: RouteInfo | None, first: bool = False) -> str:
        if kind == "chat":
            delta = {"role": "assistant", "content": ""} if first else (
                {"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish,
                      "logprobs": None}
            obj = "text_completion"
        body = {"id": rid, "object": obj, "created": created, "model": req.model,
                "choices": [choice]}
        if info is not None:
            body["cogumi"] = info.as_dict()
        return f"data: {json.dumps(body)}\n\n"

    async def stream(plan: Plan, rid: str, created: int, t0: float, endpoint: str):
        """Server-sent events. Live from the generating thread when nothing waits for the
        generation; otherwise the answer is decided first and then sent in the pieces it
        was generated in (or the teacher's answer)."""
        kind, req = plan.kind, plan.req
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        cancelled = threading.Event()
        ans = plan.answer
        pieces: list[str] = []
        queue: asyncio.Queue | None = None
        if ans is None and plan.waits_for_generation(system):
            gen = await anyio.to_thread.run_sync(
                lambda: engine.generate(plan.route, plan.ids, plan.params,
                                        on_text=pieces.append))
            ans = await conclude(plan, gen)
        elif ans is None:
            queue = asyncio.Queue()
            loop = asyncio.get_running_loop()

            def put(item) -> None:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, item)
                except RuntimeError:  # the loop is closed: the server is stopping
                    cancelled.set()

            def work() -> None:
                try:
                    put(("done", engine.generate(plan.route, plan.ids, plan.params,
                                                 on_text=lambda t: put(("text", t)),
                                                 cancelled=cancelled)))
                except Exception as e:  # noqa: BLE001 - reported in the stream
                    put(("error", e))

            threading.Thread(target=work, daemon=True, name=f"generate-{rid}").start()
        info = plan.info if ans is None else ans.info

        async def events():
            finished = False
            metrics.inflight.inc()
            try:
                yield chunk(kind, req, rid, created, None, None, info, first=True)
                if queue is not None:
                    while True:
                        what, item = await queue.get()
                        if what == "text":
                            yield chunk(kind, req, rid, created, item, None, None)
                        elif what == "error":
                            raise item
                        else:
                            done = await conclude(plan, item)
                            break
                else:
                    done = ans
                    sent = pieces if (ans.generation is not None and not info.escalated
                                      ) else [ans.text]
                    for p in sent:
                        if p:
                            yield chunk(kind, req, rid, created, p, None, None)
                yield chunk(kind, req, rid, created, None, done.finish_reason, info)
                if include_usage:
                    body = {"id": rid, "object": "chat.completion.chunk" if kind == "chat"
                            else "text_completion", "created": created, "model": req.model,
                            "choices": [], "usage": done.usage}
                    yield f"data: {json.dumps(body)}\n\n"
                yield "data: [DONE]\n\n"
                finished = True
                metrics.requests.labels(endpoint, info.route, str(info.escalated),
                                        "true").inc()
                metrics.latency.labels(endpoint).observe(time.monotonic() - t0)
            finally:
                metrics.inflight.dec()
                if not finished:
                    cancelled.set()  # the generating thread stops at its next token
                    metrics.cancelled.inc()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={**info.headers(), "cache-control": "no-cache"})

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        return await handle("chat", req)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        return await handle("completion", req)

    return app


class RunningServer:
    """uvicorn serving an app on a free loopback port from a thread of this process, for
    the length of a `with` block (5A's smoke test, the tests)."""

    def __init__(self, app) -> None:
        import uvicorn

        from cogumi.teacher import free_loopback_port
        self.port = free_loopback_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
