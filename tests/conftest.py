"""Shared test helpers. Run the suite with `nox -s tests` (or `pytest tests`)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

# Tests never reach the network: the hub is off for this process and every child it starts
# (the preflight then answers from the local caches alone, cogumi.preflight.hub_unreachable).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from cogumi.profile import load_profile, parse_profile

ROOT = Path(__file__).resolve().parents[1]


class LoopbackServer:
    """A ThreadingHTTPServer on a free loopback port, serving `handler` from a daemon thread
    (the fake OpenAI-compatible endpoints of the tests); `url` ends in /v1."""

    def serve(self, handler) -> None:
        from http.server import ThreadingHTTPServer
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ChatTeacher(LoopbackServer):
    """A fake OpenAI-compatible teacher: `/v1/models` lists `model_id`, and every chat
    completion answers `reply(last message's content)` with the given token usage. Keeps
    every request body (`bodies`), so a test can check what the teacher was shown."""

    def __init__(self, reply, model_id: str = "fake-teacher", usage: tuple[int, int] = (50, 12)):
        import json
        from http.server import BaseHTTPRequestHandler

        self.bodies, self.lock = [], threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # /v1/models
                self._send({"data": [{"id": model_id}]})

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(req)
                self._send({"choices": [{"message": {"role": "assistant",
                                                     "content": reply(req["messages"][-1]["content"])},
                                         "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]}})

        self.serve(Handler)


@pytest.fixture
def tiny_profile():
    return load_profile("tiny")


def profile_with(tmp_path: Path, extra_toml: str, base: str = "tiny"):
    """A copy of a shipped profile with extra TOML appended, written to a file. A table the
    extra TOML declares (`[teacher]`, `[distill]`, ...) replaces the profile's own."""
    import re

    text = (ROOT / "cogumi" / "profiles" / f"{base}.toml").read_text()
    for table in re.findall(r"(?m)^\[([A-Za-z0-9_.]+)\]\s*$", extra_toml):
        text = re.sub(rf"(?ms)^\[{re.escape(table)}\]\s*\n.*?(?=^\[|\Z)", "", text)
    text += "\n" + extra_toml
    path = tmp_path / f"{base}-variant.toml"
    path.write_text(text)
    return parse_profile(text, str(path)), path


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty `datasets` cache with the hub off: fixtures/hub_cache.py fills it."""
    import datasets
    cache = tmp_path / "hf-datasets"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


@pytest.fixture(scope="session")
def tiny_f32_gguf(tmp_path_factory):
    """The tiny fixture Llama exported by 2C's converter to F32 GGUF, once per session:
    (folder holding f32.gguf, the converter's pre-tokenizer decision)."""
    from cogumi.compression import gguf_export as G
    out = tmp_path_factory.mktemp("tiny-gguf")
    decision = G.convert_to_gguf(ROOT / "fixtures" / "tiny-llama", out / "f32.gguf", "F32",
                                 out / "convert.log")
    return out, decision


# ---------------------------------------------------------------- serving (cogumi serve, 5A, 5B)
@pytest.fixture(scope="session")
def bundle_parts(tiny_f32_gguf, tmp_path_factory):
    """A bundle's base and modifiers from the tiny fixture (tests/serving_bundle.py), built
    once for every serving test."""
    pytest.importorskip("llama_cpp")
    from tests.serving_bundle import build_parts
    return build_parts(tmp_path_factory.mktemp("bundle-parts"), tiny_f32_gguf[0] / "f32.gguf")


@pytest.fixture(scope="session")
def routed_parts(bundle_parts, tmp_path_factory):
    """A router fitted on a handful of queries and an escalation model fitted on real
    generations of the bundle's base (tests/serving_bundle.py), once per session."""
    pytest.importorskip("sklearn")
    from tests.serving_bundle import fit_escalation, fit_router
    work = tmp_path_factory.mktemp("routed")
    return {"router_dir": fit_router(work / "router"),
            "escalation": fit_escalation(work / "escalation.json", bundle_parts), "work": work}
