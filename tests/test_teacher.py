"""The teacher is served, not imported (cogumi.teacher): reached only through the
OpenAI-compatible backend, whose faults (server down, 429, 500, malformed JSON, a body that
is no completion) are retried with backoff and counted by reason, and which fails in one
line after the retry budget with nothing partial in its cache. A scripted fake server on
loopback drives the faults; llama-cpp-python's own server on the tiny fixture GGUF checks
the real lifecycle: started on a free loopback port, healthy, answering as the in-process
llama.cpp backend does, and gone after the `with` block, an exception included."""

from __future__ import annotations

import json
import socket
from http.server import BaseHTTPRequestHandler

import pytest

from cogumi.evaluation import GenerationRequest
from cogumi.evaluation.backends.openai_backend import EndpointFailed, OpenAIBackend
from cogumi.profile import ProfileError
from cogumi.teacher import LlamaCppServer, TeacherUnavailable, free_loopback_port

from .conftest import LoopbackServer, profile_with

OK = {"choices": [{"message": {"role": "assistant", "content": "The answer is 4"},
                   "finish_reason": "stop"}],
      "usage": {"prompt_tokens": 12, "completion_tokens": 5}}


class ScriptedServer(LoopbackServer):
    """/v1/chat/completions answers with the next step of a script, then with OK:
    an int is that HTTP status, "not-json" a 200 whose body is not JSON, "no-choices" a
    200 JSON body that is not a completion."""

    def __init__(self, script):
        self.script, self.calls = list(script), 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                server.calls += 1
                step = server.script.pop(0) if server.script else "ok"
                status, body = 200, json.dumps(OK).encode()
                if isinstance(step, int):
                    status, body = step, b'{"error": "busy"}'
                elif step == "not-json":
                    body = b'{"choices": [{"message": '
                elif step == "no-choices":
                    body = b'{"object": "error", "detail": "overloaded"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(body)

        self.serve(Handler)


@pytest.fixture
def scripted():
    made = []

    def make(script):
        made.append(ScriptedServer(script))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _req(text="q"):
    return GenerationRequest(messages=({"role": "user", "content": text},), max_new_tokens=8,
                             temperature=0.0)


def _cached(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_each_fault_is_retried_and_counted_by_reason(scripted, tmp_path):
    srv = scripted([429, 500, "not-json", "no-choices"])
    be = OpenAIBackend(srv.url, "teacher", max_retries=4, backoff_s=0.001, on_failure="raise",
                       cache_dir=tmp_path / "cache")
    out = be.generate([_req()])[0]
    assert out.text == "The answer is 4" and srv.calls == 5
    assert be.usage["failures"] == {"http_429": 1, "http_500": 1, "malformed_json": 1,
                                    "malformed_response": 1}
    assert be.usage["retries"] == 4 and be.usage["errors"] == 0
    # The cache holds the one complete answer, and a rerun asks nothing.
    [entry] = _cached(tmp_path / "cache")
    assert json.loads(entry.read_text()) == OK
    again = OpenAIBackend(srv.url, "teacher", on_failure="raise", cache_dir=tmp_path / "cache")
    assert again.generate([_req()])[0].text == "The answer is 4" and srv.calls == 5


def test_after_the_retry_budget_the_teacher_fails_in_one_line(scripted, tmp_path):
    srv = scripted([500] * 10)
    be = OpenAIBackend(srv.url, "teacher", max_retries=2, backoff_s=0.001, on_failure="raise",
                       cache_dir=tmp_path / "cache")
    with pytest.raises(EndpointFailed) as err:
        be.generate([_req()])
    msg = str(err.value)
    assert "\n" not in msg and srv.calls == 3
    assert msg.startswith(f"{srv.url}/chat/completions (model teacher): gave up after 3 "
                          f"attempts (http_500 x3); last: http_500: HTTP 500")
    assert _cached(tmp_path / "cache") == []  # nothing partial is ever cached


def test_a_teacher_that_is_down_is_unreachable_not_an_empty_answer():
    port = free_loopback_port()  # nothing listens there
    be = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "teacher", max_retries=1,
                       backoff_s=0.001, on_failure="raise")
    with pytest.raises(EndpointFailed, match=r"gave up after 2 attempts \(unreachable x2\)"):
        be.generate([_req()])
    assert be.usage["failures"] == {"unreachable": 2}


def test_a_server_that_cannot_load_its_model_fails_in_one_line(tmp_path):
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"GGUF but not really")
    server = LlamaCppServer(bad, model_alias="t", startup_timeout_s=120,
                            log_path=tmp_path / "server.log")
    with pytest.raises(TeacherUnavailable, match=r"exited with code \d+ before it answered: "):
        server.start()
    assert not server.running
    with pytest.raises(TeacherUnavailable, match="does not exist"):
        LlamaCppServer(tmp_path / "missing.gguf", model_alias="t").start()


def test_a_teacher_table_names_where_its_model_is():
    with pytest.raises(ProfileError, match="teacher.source = 'endpoint' needs teacher.base_url"):
        profile_with_teacher('source = "endpoint"\nmodel = "gpt-x"')
    with pytest.raises(ProfileError, match="teacher.parts = 'nope' is not a part-packaged model"):
        profile_with_teacher('source = "served-gguf"\nparts = "nope"\nmodel = "m"')
    with pytest.raises(ProfileError, match="exactly one of teacher.parts and teacher.path"):
        profile_with_teacher('source = "served-gguf"\nmodel = "m"')
    with pytest.raises(ProfileError, match="exactly one of teacher.parts and teacher.path"):
        profile_with_teacher('source = "served-gguf"\nparts = "qwen2.5-coder-1.5b-instruct"\n'
                             'path = "x.gguf"\nmodel = "m"')


def test_a_teacher_file_that_is_missing_is_unavailable_in_one_line(tmp_path):
    from cogumi.teacher import teacher_backend
    cfg = profile_with_teacher('source = "served-gguf"\npath = "nowhere/model.gguf"\n'
                               'model = "m"').teacher
    with pytest.raises(TeacherUnavailable, match="teacher.path: no GGUF file at .*nowhere"):
        with teacher_backend(cfg, root=tmp_path):
            pass


@pytest.mark.slow
def test_the_tiny_profiles_teacher_is_served_from_its_fixture_and_solves_fixture_math(tmp_path,
                                                                                     monkeypatch):
    """The committed fixture teacher, through the path every phase takes (teacher_backend),
    on the first items of the fixture MATH benchmark: it must solve most of them (its card
    measures 0.96 on all 150 in transformers)."""
    from cogumi.evaluation import GenerationSettings, evaluate, load_task
    from cogumi.gates import repo_root
    from cogumi.profile import load_profile
    from cogumi.teacher import teacher_backend

    root = repo_root()
    profile = load_profile("tiny")
    task = load_task("math", root / profile.eval.math)
    # no root: a profile's path is relative to the repository, wherever the caller runs
    monkeypatch.chdir(tmp_path)
    with teacher_backend(profile.teacher, log_dir=tmp_path) as teacher:
        report = evaluate(teacher, task, GenerationSettings(max_new_tokens=64), limit=10)
    solved = sum(r["verdicts"][0] for r in report.records)
    assert solved >= 8, report.records


def profile_with_teacher(body: str):
    """The tiny profile with its [teacher] table replaced by `body`."""
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        return profile_with(Path(d), f"[teacher]\n{body}\n")[0]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_the_real_server_answers_as_llama_cpp_in_process_and_is_stopped(tiny_f32_gguf, tmp_path):
    from cogumi.evaluation.backends.llamacpp_backend import LlamaCppBackend

    gguf = tiny_f32_gguf[0] / "f32.gguf"
    messages = ({"role": "user", "content": "What is 7 + 8?"},)
    request = GenerationRequest(messages=messages, max_new_tokens=12, temperature=0.0)
    local = LlamaCppBackend(gguf, n_ctx=512, n_threads=1).generate([request])[0]
    with LlamaCppServer(gguf, model_alias="tiny-teacher", n_ctx=512, n_threads=1,
                        startup_timeout_s=120, log_path=tmp_path / "server.log") as server:
        port = server.port
        assert server.running and _port_open(port)
        be = OpenAIBackend(server.base_url, "tiny-teacher", on_failure="raise")
        served = be.generate([request, request])
        be.close()
    assert not server.running and not _port_open(port)
    # The server renders the GGUF's own chat template, greedy: the in-process answer.
    assert [o.text for o in served] == [local.text, local.text] and local.text
    assert served[0].completion_tokens == local.completion_tokens
    # An exception inside the block still stops it.
    with pytest.raises(RuntimeError, match="boom"):
        with LlamaCppServer(gguf, model_alias="t", n_ctx=256, n_threads=1,
                            startup_timeout_s=120) as server:
            port = server.port
            raise RuntimeError("boom")
    assert not server.running and not _port_open(port)
