"""cogumi.distillation against fake OpenAI-compatible servers on loopback: a rerun sends
nothing (content cache), faults are retried and counted by reason, the retry budget ends the
run in one line with only complete answers cached, an interrupted cache write leaves no
entry, the budget stops before it is exceeded, the concurrency limit holds, Batch API files
round-trip into the same cache, and each verifier accepts and rejects."""

from __future__ import annotations

import json
import os

import pytest

from cogumi.distillation import (
    Budget,
    ExampleCache,
    ExampleVerifier,
    generate_examples,
    import_batch_output,
    read_batch_output,
    write_batch_file,
)
from cogumi.distillation.batch import BatchFileError
from cogumi.distillation.budget import cost_usd, prompt_token_bound
from cogumi.distillation.generate import to_generation_request
from cogumi.evaluation.backends.openai_backend import EndpointFailed, OpenAIBackend

from .test_eval_openai import FakeServer
from .test_teacher import ScriptedServer


@pytest.fixture
def servers():
    made = []

    def make(cls, *a, **kw):
        made.append(cls(*a, **kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _math_requests(n, start=0):
    return [{"id": f"m{i}", "domain": "math", "prompt": f"What is {i} + {i}?",
             "check": {"kind": "math", "reference": str(2 * i), "answer_type": "expression"}}
            for i in range(start, start + n)]


def _adder(body):
    i = int(body["messages"][-1]["content"].split("What is ")[1].split(" ")[0])
    return f"{i} + {i} = {2 * i}. The answer is {2 * i if i % 3 else 2 * i + 1}"


def _verify_all_ok(pairs):
    from cogumi.distillation import Verdict
    return [Verdict(True, "accepted", "", "test") for _ in pairs]


def test_a_rerun_sends_no_request_and_costs_nothing(servers, tmp_path):
    srv = servers(FakeServer, _adder)
    be = OpenAIBackend(srv.url, "teacher", concurrency=2)
    first = generate_examples(be, _math_requests(6), verifier=ExampleVerifier(),
                              cache_dir=tmp_path / "c", prices=(1.0, 2.0))
    assert srv.calls == 6 and first.usage["sent"] == 6 and first.usage["cache_hits"] == 0
    # i % 3 == 0 answers off by one: math-verify rejects them (m0, m3), keeps the rest.
    assert sorted(e["id"] for e in first.kept) == ["m1", "m2", "m4", "m5"]
    assert {r["id"]: r["reason"] for r in first.rejected} == {"m0": "wrong_answer",
                                                             "m3": "wrong_answer"}
    assert first.usage["cost_usd"] == pytest.approx(6 * (10 * 1.0 + 5 * 2.0) / 1e6)
    e = first.kept[0]
    assert set(e) >= {"id", "domain", "instruction", "response", "source"}
    assert e["source"] == "teacher" and e["instruction"] == "What is 1 + 1?"

    again = generate_examples(OpenAIBackend(srv.url, "teacher"), _math_requests(6),
                              verifier=ExampleVerifier(), cache_dir=tmp_path / "c",
                              prices=(1.0, 2.0))
    assert srv.calls == 6  # nothing sent
    assert again.usage["sent"] == 0 and again.usage["cache_hits"] == 6
    assert again.usage["cost_usd"] == 0.0 and again.usage["http_calls"] == 0
    assert [e["id"] for e in again.kept] == [e["id"] for e in first.kept]
    # A changed request (another seed) is another entry.
    changed = _math_requests(1, start=1)
    changed[0]["seed"] = 7
    generate_examples(be, changed, verifier=ExampleVerifier(), cache_dir=tmp_path / "c")
    assert srv.calls == 7


def test_the_teacher_never_sees_the_reference(servers, tmp_path):
    srv = servers(FakeServer, _adder)
    reqs = _math_requests(3, start=40)
    generate_examples(OpenAIBackend(srv.url, "t"), reqs, verifier=ExampleVerifier(),
                      cache_dir=tmp_path / "c")
    sent = json.dumps(srv.bodies)
    for r in reqs:
        assert json.dumps(r["check"]) not in sent and "check" not in sent


def test_faults_are_retried_and_counted_by_reason(servers, tmp_path):
    srv = servers(ScriptedServer, [429, 500, "not-json", "no-choices"])
    be = OpenAIBackend(srv.url, "teacher", max_retries=4, backoff_s=0.001, on_failure="raise")
    res = generate_examples(be, _math_requests(1, start=2), verifier=_verify_all_ok,
                            cache_dir=tmp_path / "c")
    assert srv.calls == 5 and len(res.kept) == 1
    assert res.usage["failures"] == {"http_429": 1, "http_500": 1, "malformed_json": 1,
                                     "malformed_response": 1}
    assert res.usage["retries"] == 4 and res.usage["http_calls"] == 5


def test_a_slow_teacher_is_a_counted_timeout(servers, tmp_path):
    srv = servers(FakeServer, _adder, delay=0.5)
    be = OpenAIBackend(srv.url, "teacher", max_retries=1, backoff_s=0.001, timeout_s=0.05,
                       on_failure="record")
    res = generate_examples(be, _math_requests(1, start=1), verifier=ExampleVerifier(),
                            cache_dir=tmp_path / "c")
    assert res.usage["failures"] == {"timeout": 2}
    assert [r["reason"] for r in res.rejected] == ["teacher_error"] and not res.kept
    assert ExampleCache(tmp_path / "c").entries() == []


def test_after_the_retry_budget_the_run_fails_in_one_line_with_only_complete_answers(
        servers, tmp_path):
    # Two answers, then the server fails for good.
    srv = servers(ScriptedServer, ["ok", "ok"] + [500] * 20)
    be = OpenAIBackend(srv.url, "teacher", max_retries=2, backoff_s=0.001, on_failure="raise",
                       concurrency=1)
    with pytest.raises(EndpointFailed) as err:
        generate_examples(be, _math_requests(4), verifier=_verify_all_ok,
                          cache_dir=tmp_path / "c", concurrency=1)
    assert "\n" not in str(err.value) and "gave up after 3 attempts (http_500 x3)" in str(err.value)
    entries = ExampleCache(tmp_path / "c").entries()
    assert len(entries) == 2
    assert all(json.loads(p.read_text())["text"] == "The answer is 4" for p in entries)
    assert not [p for p in (tmp_path / "c").rglob("*") if p.is_file() and p not in entries]


def test_an_interrupted_cache_write_leaves_no_entry(servers, tmp_path, monkeypatch):
    srv = servers(FakeServer, _adder)

    def killed(fd):  # the process dies after writing the bytes, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        generate_examples(OpenAIBackend(srv.url, "t"), _math_requests(1, start=1),
                          verifier=ExampleVerifier(), cache_dir=tmp_path / "c")
    monkeypatch.undo()
    assert ExampleCache(tmp_path / "c").entries() == []
    # A temporary file a SIGKILL would leave is never read as an entry.
    key_dir = tmp_path / "c" / "ab"
    key_dir.mkdir(parents=True)
    (key_dir / ".ab12.json.1234.tmp").write_text('{"text": "half')
    assert ExampleCache(tmp_path / "c").entries() == []
    res = generate_examples(OpenAIBackend(srv.url, "t"), _math_requests(1, start=1),
                            verifier=ExampleVerifier(), cache_dir=tmp_path / "c")
    assert res.usage["sent"] == 1 and len(ExampleCache(tmp_path / "c").entries()) == 1


def test_the_budget_stops_before_it_is_exceeded(servers, tmp_path):
    srv = servers(FakeServer, _adder)
    reqs = _math_requests(5, start=1)
    for r in reqs:
        r["max_tokens"] = 100
    g = to_generation_request(reqs[0])
    worst = prompt_token_bound(list(g.messages), None) + 100
    prices = (2.0, 4.0)
    worst_usd = cost_usd(prices, worst - 100, 100)
    spent_each = cost_usd(prices, 10, 5)  # what the fake server reports per answer
    # Room for one worst case plus 2.5 real answers: a request is sent only while what was
    # spent plus its own worst case fits, so three are sent (spent 2 answers + a worst case
    # fits; 3 answers + a worst case does not) and two are kept back.
    budget = Budget(max_usd=worst_usd + 2.5 * spent_each)
    res = generate_examples(OpenAIBackend(srv.url, "t", concurrency=1), reqs,
                            verifier=ExampleVerifier(), cache_dir=tmp_path / "c",
                            budget=budget, prices=prices, concurrency=1)
    expected = 3
    assert res.usage["sent"] == srv.calls == expected
    assert res.budget["spent_usd"] == pytest.approx(expected * spent_each)
    assert res.budget["spent_usd"] <= budget.max_usd
    assert res.budget_stopped and [r["id"] for r in res.not_sent] == ["m4", "m5"]
    assert res.accounted == 5
    # A token budget that cannot take one worst case sends nothing.
    none = generate_examples(OpenAIBackend(srv.url, "t"), _math_requests(3, start=20),
                             verifier=ExampleVerifier(), cache_dir=tmp_path / "c",
                             budget=Budget(max_tokens=worst - 1))
    assert none.budget_stopped and none.usage["sent"] == 0 and len(none.not_sent) == 3
    assert none.accounted == 3
    # Cache hits cost nothing: a rerun under a zero budget still returns every answer.
    rerun = generate_examples(OpenAIBackend(srv.url, "t"), reqs[:expected],
                              verifier=ExampleVerifier(), cache_dir=tmp_path / "c",
                              budget=Budget(max_usd=0.0), prices=prices)
    assert rerun.usage["cache_hits"] == expected and not rerun.not_sent


def test_a_tight_dollar_budget_sends_fewer_than_all(servers, tmp_path):
    srv = servers(FakeServer, _adder)
    reqs = _math_requests(4, start=1)
    g = to_generation_request(reqs[0])
    worst = prompt_token_bound(list(g.messages), None) + g.max_new_tokens
    prices = (1.0, 1.0)
    # Exactly one worst case plus one real answer: the second request does not fit.
    budget = Budget(max_usd=cost_usd(prices, worst, 0) + cost_usd(prices, 10, 5) * 0.5)
    res = generate_examples(OpenAIBackend(srv.url, "t"), reqs, verifier=ExampleVerifier(),
                            cache_dir=tmp_path / "c", budget=budget, prices=prices,
                            concurrency=1)
    assert srv.calls == 1 and res.budget_stopped and len(res.not_sent) == 3
    assert res.budget["spent_usd"] <= budget.max_usd


def test_the_concurrency_limit_holds(servers, tmp_path):
    srv = servers(FakeServer, _adder, hold_until=3)
    res = generate_examples(OpenAIBackend(srv.url, "t", concurrency=3), _math_requests(9),
                            verifier=_verify_all_ok, cache_dir=tmp_path / "c")
    assert srv.max_in_flight == 3 and len(res.kept) == 9
    assert [e["id"] for e in res.kept] == [f"m{i}" for i in range(9)]  # request order


def test_requests_are_checked_in_one_line(tmp_path):
    bad = _math_requests(2)
    bad[1]["id"] = "m0"
    with pytest.raises(ValueError, match=r"requests\[1\]: duplicate id 'm0'"):
        generate_examples(None, bad, verifier=_verify_all_ok, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"requests\[0\] \(x\): needs a dict 'check'"):
        generate_examples(None, [{"id": "x", "domain": "math", "prompt": "p"}],
                          verifier=_verify_all_ok, cache_dir=tmp_path)


def test_batch_file_round_trip_fills_the_cache(servers, tmp_path):
    reqs = _math_requests(4, start=1)
    path = write_batch_file(reqs, tmp_path / "batch.jsonl", model="gpt-x")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == [r["id"] for r in reqs]
    assert {x["url"] for x in lines} == {"/v1/chat/completions"}
    assert {x["method"] for x in lines} == {"POST"}
    meta = json.loads((tmp_path / "batch.jsonl.batch.json").read_text())
    assert meta["completion_window"] == "24h" and meta["requests"] == 4
    # The body is the one the live backend sends for the same request.
    srv = servers(FakeServer, _adder)
    be = OpenAIBackend(srv.url, "gpt-x")
    be.generate([to_generation_request(reqs[0])])
    assert lines[0]["body"] == srv.bodies[0]
    assert "check" not in path.read_text() and '"reference"' not in path.read_text()

    # The API's output file: one line per request, in any order, one of them failed.
    out = tmp_path / "output.jsonl"
    rows = []
    for x in reversed(lines):
        if x["custom_id"] == "m2":
            rows.append({"id": "batch_req_2", "custom_id": "m2", "response": None,
                         "error": {"code": "server_error", "message": "boom"}})
            continue
        body = {"choices": [{"index": 0, "message": {"role": "assistant",
                                                     "content": _adder(x["body"])},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 10}}
        rows.append({"id": "batch_req", "custom_id": x["custom_id"],
                     "response": {"status_code": 200, "request_id": "r", "body": body},
                     "error": None})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read = read_batch_output(out)
    assert set(read) == {"m1", "m2", "m3", "m4"} and "error" in read["m2"]
    digest = be.identity()["model_digest"]
    summary = import_batch_output(out, reqs, cache_dir=tmp_path / "c", model_digest=digest,
                                  batch_prices=(0.5, 1.0))
    assert summary["imported"] == 3 and list(summary["failed"]) == ["m2"]
    assert summary["cost_usd"] == pytest.approx(3 * (20 * 0.5 + 10 * 1.0) / 1e6)
    twice = import_batch_output(out, reqs, cache_dir=tmp_path / "c", model_digest=digest,
                                batch_prices=(0.5, 1.0))
    assert twice["imported"] == 0 and twice["already_cached"] == 3 and twice["cost_usd"] == 0
    calls = srv.calls
    res = generate_examples(be, [r for r in reqs if r["id"] != "m2"], verifier=ExampleVerifier(),
                            cache_dir=tmp_path / "c")
    assert srv.calls == calls and res.usage["cache_hits"] == 3  # nothing sent
    assert sorted(e["id"] for e in res.kept) == ["m1", "m4"]
    assert [r["id"] for r in res.rejected] == ["m3"]  # 3 % 3 == 0: the wrong answer

    dup = tmp_path / "dup.jsonl"
    dup.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n")
    with pytest.raises(BatchFileError, match=r"dup.jsonl:2: custom_id .* repeats"):
        read_batch_output(dup)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"custom_id": "m1", "response": {\n')
    with pytest.raises(BatchFileError, match=r"broken.jsonl:1: invalid JSON"):
        read_batch_output(broken)


# ------------------------------------------------------------------ verifiers
def _verdicts(pairs):
    return [(v.ok, v.reason) for v in ExampleVerifier()(pairs)]


def test_math_and_choice_verifiers_accept_and_reject():
    m = {"id": "a", "domain": "math", "prompt": "p",
         "check": {"kind": "math", "reference": "\\frac{1}{2}", "answer_type": "expression"}}
    n = {"id": "b", "domain": "math", "prompt": "p",
         "check": {"kind": "math", "reference": "18", "answer_type": "number"}}
    c = {"id": "c", "domain": "mmlu", "prompt": "p",
         "check": {"kind": "mmlu", "answer": 2, "n_options": 4}}
    assert _verdicts([(m, "so \\boxed{0.5}"), (m, "The answer is 1/3"), (m, "no idea"),
                      (n, "She earns $18.00 per day. The answer is $18.00"), (n, "#### 17"),
                      (c, "The answer is C"), (c, "The answer is A"), (c, "")]) == [
        (True, "accepted"), (False, "wrong_answer"), (False, "no_answer"),
        (True, "accepted"), (False, "wrong_answer"),
        (True, "accepted"), (False, "wrong_answer"), (False, "empty_response")]
    unknown = {"id": "d", "domain": "x", "prompt": "p", "check": {"kind": "essay"}}
    assert _verdicts([(unknown, "text")]) == [(False, "no_verifier")]


def test_tool_call_verifier_is_bfcls_ast_checker():
    pytest.importorskip("bfcl_eval")
    fn = [{"name": "calculate_triangle_area", "description": "Area of a triangle.",
           "parameters": {"type": "dict", "properties": {
               "base": {"type": "integer", "description": "The base."},
               "height": {"type": "integer", "description": "The height."}},
               "required": ["base", "height"]}}]
    check = {"kind": "tool_call", "id": "simple_0", "bfcl_category": "simple_python",
             "question": [[{"role": "user", "content": "Area of base 10, height 5?"}]],
             "function": fn,
             "ground_truth": [{"calculate_triangle_area": {"base": [10], "height": [5]}}]}
    r = {"id": "t", "domain": "automation", "prompt": "p", "check": check}
    assert _verdicts([(r, "[calculate_triangle_area(base=10, height=5)]"),
                      (r, "[calculate_triangle_area(base=10, height=6)]"),
                      (r, "I would call the area function.")]) == [
        (True, "accepted"), (False, "wrong_answer"), (False, "no_answer")]


def test_code_verifier_runs_the_tests_in_the_sandbox():
    from cogumi.evaluation.sandbox import probe_isolation
    if not probe_isolation()["namespaces"]:
        pytest.skip("namespace isolation unavailable: code verdicts would be unverified")
    check = {"kind": "code", "prompt": 'def add_two(x):\n    """Return x plus 2."""\n',
             "test": "def check(candidate):\n    assert candidate(1) == 3\n    assert candidate(-2) == 0\n",
             "entry_point": "add_two"}
    r = {"id": "c", "domain": "code", "prompt": "p", "check": check}
    got = ExampleVerifier()([(r, "```python\ndef add_two(x):\n    return x + 2\n```"),
                             (r, "```python\ndef add_two(x):\n    return x + 3\n```"),
                             (r, "    return x + 2\n")])
    assert [(v.ok, v.reason) for v in got] == [(True, "accepted"), (False, "wrong_answer"),
                                               (True, "accepted")]  # a body continues the stub
    assert got[0].verified_by == "tests in the sandbox"


# ------------------------------------------------------------------ the teacher on a suite
def test_the_teacher_is_scored_through_the_same_cache_and_budget(servers, tmp_path):
    from cogumi.distillation import BudgetedTeacher, BudgetExceeded
    from cogumi.evaluation import GenerationSettings, evaluate, load_task
    rows = [{"problem": f"What is {i} + {i}?", "level": "Level 1", "type": "Algebra",
             "solution": f"$\\boxed{{{2 * i}}}$"} for i in range(1, 5)]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = load_task("math", path)
    srv = servers(FakeServer, _adder)
    teacher = BudgetedTeacher(OpenAIBackend(srv.url, "t"), cache_dir=tmp_path / "c",
                              budget=Budget(), prices=(1.0, 1.0))
    report = evaluate(teacher, [task], GenerationSettings(max_new_tokens=16))
    assert report.metrics["math.accuracy"] == 0.75 and srv.calls == 4  # 3 % 3 == 0 is wrong
    assert teacher.usage["sent"] == 4 and teacher.usage["cost_usd"] == pytest.approx(4 * 15e-6)
    again = BudgetedTeacher(OpenAIBackend(srv.url, "t"), cache_dir=tmp_path / "c",
                            budget=Budget(max_usd=0.0), prices=(1.0, 1.0))
    assert evaluate(again, [task], GenerationSettings(max_new_tokens=16)).metrics[
        "math.accuracy"] == 0.75
    assert srv.calls == 4 and again.usage["cache_hits"] == 4
    poor = BudgetedTeacher(OpenAIBackend(srv.url, "t"), cache_dir=tmp_path / "other",
                           budget=Budget(max_tokens=10), prices=(1.0, 1.0))
    with pytest.raises(BudgetExceeded, match="cannot take 4 more requests"):
        evaluate(poor, [task], GenerationSettings(max_new_tokens=16))
    assert srv.calls == 4


# ------------------------------------------------------------------ cluster count
def test_the_cluster_count_is_chosen_by_silhouette_in_the_declared_range():
    import numpy as np

    from cogumi.distillation.clusters import choose_clusters, top_terms
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 16)) * 5
    x = np.concatenate([c + rng.normal(scale=0.1, size=(6, 16)) for c in centres])
    got = choose_clusters(x, 8, 12, seed=0)
    assert got.k == 10 and got.searched == (8, 12)
    assert max(got.silhouette, key=got.silhouette.get) == 10
    assert len(set(got.labels[:6])) == 1 and got.labels[0] != got.labels[6]
    # Held-out points land on their own blob's centroid.
    near, _ = got.predict(centres + rng.normal(scale=0.1, size=centres.shape))
    assert [int(near[i]) for i in range(10)] == [int(got.labels[6 * i]) for i in range(10)]
    # Three blobs: the declared range keeps k >= 8 even though 3 fits better.
    three = np.concatenate([c + rng.normal(scale=0.1, size=(10, 16)) for c in centres[:3]])
    assert choose_clusters(three, 8, 12, seed=0).k >= 8
    assert choose_clusters(three, 2, 12, seed=0).k == 3
    # Too few failures for the declared range: searched lower, and said so.
    nine = choose_clusters(x[:18:2], 8, 12, seed=0)  # 9 points: k = 8 is the only one
    assert nine.searched == (8, 8) and nine.k == 8 and not nine.note
    few = choose_clusters(x[:14:2], 8, 12, seed=0)
    assert few.searched == (2, 6) and "declared range 8..12 needs at least 9" in few.note
    assert "2..6 was searched" in few.criterion
    assert choose_clusters(x[:2], 8, 12, seed=0).k == 1
    assert choose_clusters(x[:0], 8, 12, seed=0).k == 0
    terms = top_terms(["add the apples", "add more apples", "reverse the string",
                       "reverse a string"], np.array([0, 0, 1, 1]), 2, n_terms=2)
    assert set(terms[0]) == {"add", "apples"} and set(terms[1]) == {"reverse", "string"}


def test_a_killed_run_leaves_only_complete_entries_and_a_rerun_sends_the_rest(servers, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    srv = servers(FakeServer, _adder, delay=0.15)
    cache = tmp_path / "c"
    child = subprocess.Popen([sys.executable, "-c", f"""
import sys; sys.path.insert(0, {str(os.getcwd())!r})
from cogumi.distillation import generate_examples
from cogumi.evaluation.backends.openai_backend import OpenAIBackend
from tests.test_distillation import _math_requests, _verify_all_ok
generate_examples(OpenAIBackend({srv.url!r}, "t", concurrency=1), _math_requests(40),
                  verifier=_verify_all_ok, cache_dir={str(cache)!r})
"""], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while len(ExampleCache(cache).entries()) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)  # no cleanup runs: whatever is on disk stays
    child.wait()
    entries = ExampleCache(cache).entries()
    assert 3 <= len(entries) < 40
    for p in entries:  # each one complete
        assert json.loads(p.read_text())["text"]
    calls = srv.calls
    res = generate_examples(OpenAIBackend(srv.url, "t", concurrency=4), _math_requests(40),
                            verifier=_verify_all_ok, cache_dir=cache)
    # The killed child may have had one request in flight: it is sent again.
    assert res.usage["cache_hits"] == len(entries) and res.usage["sent"] == 40 - len(entries)
    assert srv.calls - calls == 40 - len(entries) and len(res.kept) == 40
