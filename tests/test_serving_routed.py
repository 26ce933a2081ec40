"""The routed system ("cogumi") on a real tiny bundle: a router fitted on a handful of
queries (cogumi.routing.Router, hashed n-grams), an escalation model fitted on the
signals of real generations, and the fake OpenAI server of conftest as the teacher,
answering, down, slow or erroring. The route and p_wrong the server reports are checked
against the same decision computed offline, as phases 4A/4B compute it."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("fastapi")
pytest.importorskip("sklearn")

from cogumi.serving.bundle import write_bundle  # noqa: E402
from tests.conftest import LoopbackServer  # noqa: E402
from tests.serving_bundle import SERVING, RunningServer  # noqa: E402

TEACHER_ANSWER = "The teacher says 42."


def routed_bundle(bundle_parts, routed_parts, name: str, threshold: float):
    out = routed_parts["work"] / name
    thresholds = routed_parts["work"] / f"{name}-thresholds.json"
    thresholds.write_text(json.dumps({"threshold": threshold}))
    write_bundle(out, router_dir=routed_parts["router_dir"],
                 escalation=routed_parts["escalation"], thresholds=thresholds,
                 teacher={"model": "teacher", "api_key_env": "COGUMI_TEST_TEACHER_KEY",
                          "base_url": None, "timeout_s": 1.0},
                 serving=SERVING, **bundle_parts)
    return out


class Teacher(LoopbackServer):
    """A fake OpenAI-compatible teacher: mode "ok", "error" (HTTP 500), "slow" (answers after
    3 s, past the bundle's 1 s timeout) or "garbage" (200 with a body that is not an answer)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.requests.append({"path": self.path, "body": body,
                                       "auth": self.headers.get("authorization")})
                if outer.mode == "slow":
                    time.sleep(3)
                if outer.mode == "error":
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "boom"}}')
                    return
                data = (b"not json" if outer.mode == "garbage" else json.dumps({
                    "id": "x", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": TEACHER_ANSWER}}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
                }).encode())
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except BrokenPipeError:  # "slow": the server gave up waiting, as it should
                    pass

        self.serve(Handler)


@pytest.fixture(scope="module")
def teacher():
    t = Teacher()
    yield t
    t.close()


@pytest.fixture(scope="module")
def always(bundle_parts, routed_parts, teacher):
    """Threshold 0: every routed request escalates (p_wrong >= 0 always)."""
    from cogumi.serving.app import create_app
    bundle = routed_bundle(bundle_parts, routed_parts, "always", 0.0)
    with RunningServer(create_app(bundle, teacher_url=teacher.url)) as srv:
        yield srv


def ask(url, content, model="cogumi", **kw):
    return httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": content}],
        "temperature": 0, "max_tokens": 16, **kw})


def test_the_router_picks_the_route_and_the_server_reports_it(bundle_parts, routed_parts):
    from llama_cpp import Llama

    from cogumi.evaluation import GenerationRequest
    from cogumi.evaluation.backends.llamacpp_backend import LlamaCppBackend
    from cogumi.routing import Escalation, Router, serving_signals
    from cogumi.serving.app import create_app
    from cogumi.serving.bundle import load_bundle

    bundle = routed_bundle(bundle_parts, routed_parts, "never", 1.01)
    router = Router.load(routed_parts["router_dir"])
    esc = Escalation.load(routed_parts["escalation"])
    queries = ["Write a function that sorts a list.", "What is 6 times 4?", "Say goodbye."]
    with RunningServer(create_app(bundle)) as srv:
        infos = []
        for q in queries:
            resp = ask(srv.url, q)
            assert resp.status_code == 200
            info = resp.json()["cogumi"]
            route, margin = router.route(q)
            assert (info["route"], info["routed"]) == (route, True)
            assert info["confidence"] == pytest.approx(margin, abs=1e-12)
            assert resp.headers["x-cogumi-route"] == route
            assert info["escalated"] is False and info["threshold"] == 1.01
            infos.append((q, info, resp.json()["choices"][0]["message"]["content"]))
        assert {i["route"] for _, i, _ in infos} == {"code", "reasoning", "base"}
    # p_wrong as 4B computes it offline: llama-cpp-python's own completion logprobs
    # (the evaluation backend with logprobs=True) on the same route's Llama.
    b = load_bundle(bundle)
    for q, info, text in infos:
        lora = None if info["route"] == "base" else str(b.path(b.modifiers[info["route"]].file))
        llama = Llama(model_path=str(b.path(b.base)), lora_path=lora, n_ctx=512,
                      logits_all=True, verbose=False, seed=0, n_threads=1)
        backend = LlamaCppBackend(llama=llama, logprobs=True)
        out = backend.generate([GenerationRequest(
            messages=({"role": "user", "content": q},), max_new_tokens=16, temperature=0.0)])[0]
        llama.close()
        assert out.text == text
        offline = esc.p_wrong(serving_signals(out.extra["token_logprobs"], info["confidence"]))
        assert info["p_wrong"] == pytest.approx(offline, abs=1e-5)


def test_an_escalated_request_is_answered_by_the_teacher(always, teacher, monkeypatch):
    teacher.mode = "ok"
    teacher.requests.clear()
    resp = ask(always.url, "What is 12 times 7?")
    assert resp.status_code == 200
    body = resp.json()
    assert body["choices"][0]["message"]["content"] == TEACHER_ANSWER
    assert body["cogumi"]["escalated"] is True and resp.headers["x-cogumi-escalated"] == "true"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    assert body["cogumi"]["local_usage"]["completion_tokens"] > 0
    sent = teacher.requests[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["body"]["model"] == "teacher"
    assert sent["body"]["messages"] == [{"role": "user", "content": "What is 12 times 7?"}]
    # A fixed route never escalates.
    fixed = ask(always.url, "What is 12 times 7?", model="cogumi/reasoning").json()
    assert fixed["cogumi"]["escalated"] is False and fixed["cogumi"]["p_wrong"] is None
    # Nor does the routed system's own answer (cogumi/local): routed as "cogumi" was.
    local = ask(always.url, "What is 12 times 7?", model="cogumi/local").json()
    assert local["cogumi"]["escalated"] is False and local["cogumi"]["threshold"] is None
    assert local["cogumi"]["routed"] is True and local["cogumi"]["route"] == body["cogumi"]["route"]
    assert local["choices"][0]["message"]["content"] != TEACHER_ANSWER
    assert len(teacher.requests) == 1
    # Streamed: the teacher's answer, flagged.
    text, infos = [], []
    with httpx.stream("POST", f"{always.url}/v1/chat/completions", timeout=60, json={
            "model": "cogumi", "messages": [{"role": "user", "content": "What is 3 + 4?"}],
            "temperature": 0, "max_tokens": 16, "stream": True}) as r:
        assert r.headers["x-cogumi-escalated"] == "true"
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                ev = json.loads(line[6:])
                infos += [ev["cogumi"]] if "cogumi" in ev else []
                text += [c["delta"].get("content") or "" for c in ev["choices"]]
    assert "".join(text) == TEACHER_ANSWER and infos[-1]["escalated"] is True


@pytest.mark.parametrize("mode", ["error", "slow", "garbage", "down"])
def test_a_failing_teacher_leaves_the_answer_to_the_system_never_a_500(
        always, teacher, bundle_parts, routed_parts, mode):
    from cogumi.serving.app import create_app
    from cogumi.teacher import free_loopback_port
    teacher.mode = mode
    local = ask(always.url, "Describe a cat.", model="cogumi/base").json()
    if mode == "down":
        bundle = routed_parts["work"] / "always"
        app = create_app(bundle, teacher_url=f"http://127.0.0.1:{free_loopback_port()}/v1")
        ctx = RunningServer(app)
    else:
        ctx = None
    srv = ctx.__enter__() if ctx else always
    try:
        t0 = time.monotonic()
        resp = ask(srv.url, "Describe a cat.")
        assert resp.status_code == 200
        body = resp.json()
        assert body["cogumi"]["escalated"] is False and body["cogumi"]["teacher_error"]
        assert body["cogumi"]["p_wrong"] >= 0.0
        assert resp.headers["x-cogumi-escalated"] == "false"
        if body["cogumi"]["route"] == "base":
            assert body["choices"][0]["message"]["content"] == \
                local["choices"][0]["message"]["content"]
        assert body["usage"] == body["cogumi"]["local_usage"]
        if mode == "slow":
            assert "timeout" in body["cogumi"]["teacher_error"]
            assert time.monotonic() - t0 < 3  # the 1 s timeout, not the teacher's 3 s
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'cogumi_escalations_total{outcome="teacher_failed"}' in metrics
    finally:
        if ctx:
            ctx.__exit__(None, None, None)
        teacher.mode = "ok"
