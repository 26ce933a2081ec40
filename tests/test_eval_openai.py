"""The OpenAI-compatible backend against a local fake server (loopback only): retries
with backoff, the concurrency limit, the on-disk cache, token and cost accounting; and the
judge-based wins/ties/losses, asked in both orders."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from cogumi.evaluation import GenerationRequest, GenerationSettings, evaluate, load_task
from cogumi.evaluation.backends.openai_backend import OpenAIBackend
from cogumi.evaluation.compare import compare_judged, compare_verified
from cogumi.evaluation.testing import ScriptedBackend

from .conftest import LoopbackServer


class FakeServer(LoopbackServer):
    """Answers /v1/chat/completions with a function of the request body; can fail the
    first N calls and records the most requests ever in flight at once."""

    def __init__(self, answer, fail_first=0, fail_status=503, delay=0.0, hold_until=0):
        self.answer, self.fail_left, self.fail_status, self.delay = answer, fail_first, fail_status, delay
        # Each request waits (up to 2 s) until this many are in flight: makes overlap certain.
        self.hold_until = hold_until
        self.calls, self.in_flight, self.max_in_flight = 0, 0, 0
        self.lock = threading.Lock()
        self.bodies = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.calls += 1
                    server.bodies.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    fail = server.fail_left > 0
                    server.fail_left -= 1 if fail else 0
                deadline = time.monotonic() + 2
                while server.in_flight < server.hold_until and time.monotonic() < deadline:
                    time.sleep(0.005)
                time.sleep(server.delay)
                text = None if fail else server.answer(body)
                # Leave the count before replying: the client may send its next request
                # the moment it has this reply.
                with server.lock:
                    server.in_flight -= 1
                if fail:
                    self.send_response(server.fail_status)
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(b"busy")
                    return
                out = {"choices": [{"message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.serve(Handler)


@pytest.fixture
def server_factory():
    made = []

    def make(*a, **kw):
        s = FakeServer(*a, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _req(i=0, **kw):
    return GenerationRequest(messages=({"role": "user", "content": f"q{i}"},), **kw)


def test_retries_then_succeeds_and_counts_tokens_and_cost(server_factory):
    srv = server_factory(lambda b: "The answer is 4", fail_first=2, fail_status=429)
    be = OpenAIBackend(srv.url, "teacher", backoff_s=0.01, price_per_mtok=(1.0, 2.0), concurrency=1)
    out = be.generate([_req(max_new_tokens=7, temperature=0.0, seed=3, stop=("\n\n",))])[0]
    assert out.text == "The answer is 4" and out.error is None
    assert srv.calls == 3 and be.usage["retries"] == 2
    assert be.usage["prompt_tokens"] == 10 and be.usage["completion_tokens"] == 5
    assert be.usage["cost_usd"] == pytest.approx((10 * 1.0 + 5 * 2.0) / 1e6)
    body = srv.bodies[-1]
    assert body["max_tokens"] == 7 and body["seed"] == 3 and body["stop"] == ["\n\n"]
    assert body["model"] == "teacher"


def test_gives_up_with_a_recorded_error_not_an_exception(server_factory):
    srv = server_factory(lambda b: "x", fail_first=100, fail_status=500)
    be = OpenAIBackend(srv.url, "m", max_retries=2, backoff_s=0.01)
    out = be.generate([_req()])[0]
    assert out.finish_reason == "error" and "gave up after 3 attempts" in out.error
    # Client errors are not retried.
    srv2 = server_factory(lambda b: "x", fail_first=100, fail_status=400)
    be2 = OpenAIBackend(srv2.url, "m", max_retries=5, backoff_s=0.01)
    assert "HTTP 400" in be2.generate([_req()])[0].error and srv2.calls == 1


def test_concurrency_limit_is_respected(server_factory):
    # The server holds each request (up to 2 s) until 3 are in flight, so the overlap
    # is certain however loaded the machine is; a client sending more would show > 3.
    srv = server_factory(lambda b: b["messages"][0]["content"], hold_until=3)
    be = OpenAIBackend(srv.url, "m", concurrency=3)
    outs = be.generate([_req(i) for i in range(12)])
    assert [o.text for o in outs] == [f"q{i}" for i in range(12)]  # order kept
    assert srv.max_in_flight == 3


def test_disk_cache_is_keyed_by_request(server_factory, tmp_path):
    srv = server_factory(lambda b: "cached?")
    be = OpenAIBackend(srv.url, "m", cache_dir=tmp_path / "c", api_key="sk-secret")
    be.generate([_req(1), _req(2)])
    assert srv.calls == 2
    be2 = OpenAIBackend(srv.url, "m", cache_dir=tmp_path / "c")
    outs = be2.generate([_req(1), _req(2), _req(2, seed=9)])  # a new seed is a new request
    assert srv.calls == 3 and be2.usage["cache_hits"] == 2
    assert outs[0].extra["cached"] and not outs[2].extra["cached"]
    assert "sk-secret" not in "".join(p.read_text() for p in (tmp_path / "c").rglob("*.json"))


def test_a_benchmark_runs_unchanged_on_the_http_backend(server_factory, tmp_path):
    rows = [{"problem": f"What is {i} + {i}?", "level": "Level 1", "type": "Algebra",
             "solution": f"$\\boxed{{{2 * i}}}$"} for i in range(3)]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))

    def answer(body):
        i = int(body["messages"][0]["content"].split("What is ")[1].split(" ")[0])
        return f"The answer is {2 * i if i else 1}"

    srv = server_factory(answer)
    report = evaluate(OpenAIBackend(srv.url, "m"), [load_task("math", path)], GenerationSettings())
    assert report.metrics["math.accuracy"] == pytest.approx(2 / 3)


def test_judge_is_asked_in_both_orders_and_inconsistency_is_a_tie(server_factory):
    # The judge prefers the answer containing "good"; for item "biased" it always says A
    # (position bias), which must come out as a tie, not a win.
    def judge(body):
        text = body["messages"][0]["content"]
        if "biased" in text:
            return "Verdict: A"
        a = text.split("[Answer A]\n")[1].split("\n\n[Answer B]")[0]
        b = text.split("[Answer B]\n")[1]
        if "good" in a and "good" not in b:
            return "Verdict: A"
        if "good" in b and "good" not in a:
            return "Verdict: B"
        return "hmm" if "garbled" in text else "Verdict: tie"

    srv = server_factory(judge)
    items = [
        {"item_id": "w", "prompt": "p", "ours": "good", "reference": "bad"},
        {"item_id": "l", "prompt": "p", "ours": "bad", "reference": "good"},
        {"item_id": "t", "prompt": "p", "ours": "good", "reference": "good too"},
        {"item_id": "i", "prompt": "biased", "ours": "x", "reference": "y"},
        {"item_id": "u", "prompt": "garbled", "ours": "x", "reference": "y"},
    ]
    cmp = compare_judged(OpenAIBackend(srv.url, "judge"), items, task="chat")
    got = {r["item_id"]: (r["result"], r["detail"]) for r in cmp.records}
    assert got == {"w": ("win", "judge_consistent"), "l": ("loss", "judge_consistent"),
                   "t": ("tie", "judge_tie"), "i": ("tie", "judge_inconsistent"),
                   "u": ("tie", "judge_unparseable")}
    assert srv.calls == 10
    assert cmp.metrics["chat.wins"] == 0.2 and cmp.metrics["chat.ties"] == 0.6
    assert all(r["rule"] == "judge" for r in cmp.records)


def test_verifier_decides_wins_ties_losses(tmp_path):
    rows = [{"problem": f"What is {i} + {i}?", "level": "Level 1", "type": "Algebra",
             "solution": f"$\\boxed{{{2 * i}}}$"} for i in range(4)]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = load_task("math", path)

    def model(right):  # answers item i correctly iff i in right
        def respond(req, p):
            i = int(p.split("What is ")[1].split(" ")[0])
            return f"The answer is {2 * i if i in right else 99}"
        return ScriptedBackend(respond)

    ours = evaluate(model({0, 1}), [task], GenerationSettings())
    ref = evaluate(model({0, 2}), [task], GenerationSettings())
    ref.write(tmp_path / "ref")
    cmp = compare_verified(ours, tmp_path / "ref")  # a report on disk works too
    got = {r["item_id"]: (r["result"], r["detail"]) for r in cmp.records}
    ids = [r["item_id"] for r in ours.records]
    assert got[ids[0]] == ("tie", "tie_both_right")
    assert got[ids[1]][0] == "win" and got[ids[2]][0] == "loss"
    assert got[ids[3]] == ("tie", "tie_both_wrong")
    assert cmp.metrics["math.ties"] == 0.5 and cmp.metrics["math.wins"] == 0.25
    assert all(r["rule"] == "verifier" for r in cmp.records)
