"""The chat page at / in a real headless browser (Debian's Chromium driven by Playwright):
type a question, see the answer arrive in several streamed pieces, and the route, modifier
and escalation flag it was answered with. Runs in `nox -s browser` (which installs
Chromium when it is missing); skipped where /usr/bin/chromium or playwright is absent."""

from __future__ import annotations

import shutil

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(shutil.which("chromium") is None,
                                reason="Debian's chromium is not installed (nox -s browser "
                                       "installs it)")
pytest.importorskip("playwright")
pytest.importorskip("llama_cpp")

from tests.serving_bundle import RunningServer  # noqa: E402
from tests.test_serving_routed import routed_bundle  # noqa: E402

# The flags of /work/.library/env/machines/python.md: without the background-networking
# ones Chromium keeps trying hosts this closed network refuses.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_a_question_typed_in_the_page_gets_a_streamed_answer_and_its_route(
        bundle_parts, routed_parts, tmp_path):
    from playwright.sync_api import sync_playwright

    from cogumi.routing import Router
    from cogumi.serving.app import create_app

    question = "Write a function that sorts a list."
    bundle = routed_bundle(bundle_parts, routed_parts, "browser", 1.01)
    route, _ = Router.load(routed_parts["router_dir"]).route(question)
    with RunningServer(create_app(bundle)) as srv:
        alone = httpx.post(f"{srv.url}/v1/chat/completions", timeout=60, json={
            "model": "cogumi", "messages": [{"role": "user", "content": question}],
            "temperature": 0, "max_tokens": 128}).json()["choices"][0]["message"]["content"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS,
                                        headless=True)
            try:
                page = browser.new_page()
                page.goto(srv.url + "/")
                page.wait_for_selector("#model option[value='cogumi']", state="attached")
                page.fill("#question", question)
                page.click("#send")
                answer = page.wait_for_selector(".turn.assistant[data-state='done']",
                                                timeout=60_000)
                assert answer.query_selector(".content").inner_text() == alone.strip() or \
                    answer.query_selector(".content").text_content() == alone
                assert int(answer.get_attribute("data-chunks")) > 1  # streamed, not at once
                fields = {s.get_attribute("data-field"): s.inner_text()
                          for s in answer.query_selector_all(".route span")}
                assert fields["route"] == f"route: {route}"
                assert fields["modifier"] == f"modifier: {route if route != 'base' else 'none'}"
                assert fields["escalated"] == "escalated: no"
                page.screenshot(path=str(tmp_path / "chat.png"))
            finally:
                browser.close()
