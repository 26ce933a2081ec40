"""`cogumi serve` on a real bundle of the tiny fixture model (tests/serving_bundle.py):
the OpenAI-compatible routes through the official `openai` client and raw HTTP, fixed
routes, modifiers applied by llama.cpp, concurrency that never mixes adapters, streaming,
a client that goes away mid-stream, OpenAI-shaped 4xx errors, and a bundle left as it was."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("fastapi")

from cogumi.serving.bundle import file_table, verify_bundle, write_bundle  # noqa: E402
from tests.serving_bundle import MODIFIERS, SERVING, RunningServer  # noqa: E402

PROMPTS = ["What is 2 + 3?", "Write a function that adds two numbers.",
           "Name a colour.", "Is water wet?"]


@pytest.fixture(scope="module")
def fixed_bundle(bundle_parts, tmp_path_factory):
    """A bundle with its base and two modifiers and no router: fixed routes only."""
    out = tmp_path_factory.mktemp("fixed") / "bundle"
    write_bundle(out, router_dir=None, escalation=None, thresholds=None, teacher=None,
                 serving=SERVING, card="# test bundle\n", **bundle_parts)
    return out


@pytest.fixture(scope="module")
def server(fixed_bundle):
    from cogumi.serving.app import create_app
    before = file_table(fixed_bundle)
    with RunningServer(create_app(fixed_bundle)) as srv:
        yield srv
    # Nothing is written to the bundle while it is served.
    assert file_table(fixed_bundle) == before


def chat(url, model, content, **kw):
    body = {"model": model, "messages": [{"role": "user", "content": content}],
            "temperature": 0, "max_tokens": 24, **kw}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def test_models_lists_the_routed_system_and_each_fixed_route(server):
    got = httpx.get(f"{server.url}/v1/models").json()
    assert [m["id"] for m in got["data"]] == ["cogumi", "cogumi/local", "cogumi/base", *(
        f"cogumi/{n}" for n in MODIFIERS)]
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["routes"] == ["base", *MODIFIERS]


def test_the_openai_client_works_unchanged_with_and_without_streaming(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    raw = client.chat.completions.with_raw_response.create(
        model="cogumi/code", messages=[{"role": "user", "content": PROMPTS[0]}],
        temperature=0, max_tokens=24)
    assert raw.headers["x-cogumi-route"] == "code"
    assert raw.headers["x-cogumi-escalated"] == "false"
    resp = raw.parse()
    text = resp.choices[0].message.content
    assert text and resp.model == "cogumi/code"
    assert resp.usage.completion_tokens > 0 and resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    extra = resp.model_extra["cogumi"]
    assert extra["route"] == "code" and extra["modifier"] == "code"
    assert extra["escalated"] is False and extra["routed"] is False

    pieces, usage, infos = [], None, []
    for ev in client.chat.completions.create(
            model="cogumi/code", messages=[{"role": "user", "content": PROMPTS[0]}],
            temperature=0, max_tokens=24, stream=True, stream_options={"include_usage": True}):
        if ev.choices and ev.choices[0].delta.content:
            pieces.append(ev.choices[0].delta.content)
        if ev.usage:
            usage = ev.usage
        if ev.model_extra.get("cogumi"):
            infos.append(ev.model_extra["cogumi"])
    assert "".join(pieces) == text  # greedy: the stream is the same answer
    assert len(pieces) > 1  # sent as it was generated, not in one piece
    assert usage.completion_tokens == resp.usage.completion_tokens
    assert infos and infos[-1]["route"] == "code"

    comp = client.completions.create(model="cogumi/base", prompt="Question: 1 + 1?\nAnswer:",
                                     temperature=0, max_tokens=8)
    assert comp.choices[0].text and comp.usage.completion_tokens > 0


def test_a_modifier_changes_what_the_base_answers(server):
    answers = {route: [chat(server.url, f"cogumi/{route}", p).json()["choices"][0]["message"]
                       ["content"] for p in PROMPTS] for route in ("base", *MODIFIERS)}
    assert answers["base"] != answers["code"] != answers["reasoning"] != answers["base"]


def test_concurrent_requests_for_different_modifiers_equal_the_same_requests_alone(server):
    jobs = [(route, p) for p in PROMPTS for route in ("base", *MODIFIERS)]
    alone = {job: chat(server.url, f"cogumi/{job[0]}", job[1]).json()["choices"][0]
             ["message"]["content"] for job in jobs}
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: chat(server.url, f"cogumi/{job[0]}", job[1]),
                                 jobs * 2))
    for job, resp in zip(jobs * 2, together, strict=True):
        assert resp.status_code == 200
        assert resp.json()["choices"][0]["message"]["content"] == alone[job], job
        assert resp.headers["x-cogumi-route"] == job[0]


def _error(resp, status):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_bad_requests_are_openai_shaped_4xx_and_the_server_keeps_serving(server):
    url = f"{server.url}/v1/chat/completions"
    err = _error(httpx.post(url, content=b'{"model": "cogumi", "messages": [',
                            headers={"content-type": "application/json"}), 400)
    assert err["code"] == "invalid_json"
    err = _error(chat(server.url, "gpt-4", "hi"), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    err = _error(chat(server.url, "cogumi/base", "word " * 600), 400)
    assert err["code"] == "context_length_exceeded"
    err = _error(chat(server.url, "cogumi/base", "hi", temperature=7), 400)
    assert err["param"] == "temperature"
    assert _error(chat(server.url, "cogumi/base", "hi", n=2), 400)["param"] == "n"
    assert _error(chat(server.url, "cogumi/base", "hi", max_tokens=0), 400)["param"] == \
        "max_tokens"
    assert _error(httpx.post(url, json={"model": "cogumi/base", "messages": []}), 400)
    assert _error(httpx.post(url, json={"model": "cogumi/base", "messages": [
        {"role": "wizard", "content": "x"}]}), 400)
    assert _error(httpx.post(f"{server.url}/v1/completions", json={"model": "cogumi/base"}),
                  400)["param"] == "prompt"
    assert _error(httpx.get(f"{server.url}/v1/nothing"), 404)
    assert chat(server.url, "cogumi/base", "hi").status_code == 200
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'cogumi_request_errors_total{status="400"}' in metrics


def test_a_client_that_leaves_mid_stream_frees_the_slot(server):
    body = {"model": "cogumi/reasoning", "messages": [{"role": "user", "content": PROMPTS[1]}],
            "temperature": 0.9, "seed": 3, "max_tokens": 480, "stream": True}

    def cancelled() -> float:
        for line in httpx.get(f"{server.url}/metrics").text.splitlines():
            if line.startswith("cogumi_streams_cancelled_total"):
                return float(line.split()[-1])
        return 0.0

    before = cancelled()
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                      timeout=60) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: ") and '"content": "' in line and '"content": ""' \
                    not in line:
                break  # one token arrived: leave
    deadline = time.monotonic() + 20
    while cancelled() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled() == before + 1
    while httpx.get(f"{server.url}/health").json()["busy"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not httpx.get(f"{server.url}/health").json()["busy"]
    t0 = time.monotonic()
    assert chat(server.url, "cogumi/base", "hi").status_code == 200
    assert time.monotonic() - t0 < 10


def test_the_chat_page_is_served_at_the_root(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/v1/chat/completions" in page.text


def test_bundle_verify_finds_a_changed_byte_and_an_unlisted_file(fixed_bundle, tmp_path):
    import shutil
    assert verify_bundle(fixed_bundle) == []
    copy = tmp_path / "copy"
    shutil.copytree(fixed_bundle, copy)
    data = bytearray((copy / "modifiers" / "code.gguf").read_bytes())
    data[-1] ^= 1
    (copy / "modifiers" / "code.gguf").write_bytes(bytes(data))
    (copy / "stray.txt").write_text("x")
    problems = verify_bundle(copy)
    assert any("code.gguf: sha256" in p for p in problems)
    assert any("stray.txt: not listed" in p for p in problems)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"].pop("README.md")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert any("README.md: not listed" in p for p in verify_bundle(copy))


def test_streams_of_different_modifiers_at_once_are_each_the_answer_alone(server):
    def streamed(route, prompt):
        body = {"model": f"cogumi/{route}", "temperature": 0, "max_tokens": 24, "stream": True,
                "messages": [{"role": "user", "content": prompt}]}
        text = []
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                          timeout=60) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    for c in json.loads(line[6:])["choices"]:
                        text.append(c["delta"].get("content") or "")
        return "".join(text)

    jobs = [(r, PROMPTS[1]) for r in ("base", *MODIFIERS)]
    alone = [chat(server.url, f"cogumi/{r}", p).json()["choices"][0]["message"]["content"]
             for r, p in jobs]
    barrier = threading.Barrier(len(jobs))

    def at_once(job):
        barrier.wait()
        return streamed(*job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        assert list(pool.map(at_once, jobs)) == alone
