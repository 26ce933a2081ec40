"""TransformersBackend: batching must not change answers, BOS is never doubled, and
log-likelihoods are the model's own numbers. A random tiny Llama and a byte-level
tokenizer built here keep this offline and fast."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from cogumi.evaluation import (  # noqa: E402
    GenerationRequest,
    LoglikelihoodRequest,
    TransformersBackend,
)
from cogumi.evaluation.testing import tiny_llama, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Correctness tests, not speed: with 2 threads, PyTorch's batch-1 path on this small
    # CPU spends most of its time waking threads, which made the one-at-a-time half slow.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(tok, seed=1)


def _reqs(n, temperature=0.0, max_new=12, **kw):
    # Prompts of different lengths, so batches really are left-padded.
    return [
        GenerationRequest(
            messages=({"role": "user", "content": "question " + "x" * (i * 3)},),
            max_new_tokens=max_new, temperature=temperature, seed=100 + i, **kw,
        )
        for i in range(n)
    ]


def test_batched_generation_equals_one_at_a_time(model, tok):
    # Padding or batch neighbours must not change any answer, greedy or sampled: every
    # row samples from its own seeded generator.
    backend = TransformersBackend(model, tok, batch_size=8)
    for temperature in (0.0, 0.9):
        reqs = _reqs(6, temperature=temperature)
        batched = [o.text for o in backend.generate(reqs)]
        single = [backend.generate([r])[0].text for r in reqs]
        assert batched == single


def test_per_request_settings_are_honoured(model, tok):
    backend = TransformersBackend(model, tok, batch_size=16)
    reqs = [
        GenerationRequest(prompt="abc", max_new_tokens=3, temperature=0.0),
        GenerationRequest(prompt="abc", max_new_tokens=20, temperature=0.0),
        GenerationRequest(prompt="abc", max_new_tokens=20, temperature=1.0, seed=1),
        GenerationRequest(prompt="abc", max_new_tokens=20, temperature=1.0, seed=2),
        GenerationRequest(prompt="abc", max_new_tokens=20, temperature=1.0, seed=1),
    ]
    out = backend.generate(reqs)
    assert out[0].completion_tokens <= 3
    assert out[1].completion_tokens <= 20
    # Greedy with a longer budget extends the shorter greedy answer.
    assert out[1].text.startswith(out[0].text) or out[0].finish_reason == "stop"
    # Same seed, same sample; another seed, (almost surely) another sample.
    assert out[2].text == out[4].text
    assert out[2].text != out[3].text


def test_stop_strings_cut_the_text(model, tok):
    backend = TransformersBackend(model, tok)
    free = backend.generate([GenerationRequest(prompt="hello", max_new_tokens=30)])[0].text
    assert len(free) > 4
    stop = free[2:4]  # a string the greedy output is known to contain
    cut = backend.generate([GenerationRequest(prompt="hello", max_new_tokens=30, stop=(stop,))])[0]
    assert cut.text == free[: free.index(stop)]
    assert cut.finish_reason == "stop"


def test_bos_added_when_asked_and_never_doubled(model):
    no_bos_tok = tiny_tokenizer(add_bos_itself=False)  # like Gemma from GGUF
    bos = no_bos_tok.bos_token_id
    plain = "hello"
    assert no_bos_tok(plain).input_ids[0] != bos
    with_bos = TransformersBackend(model, no_bos_tok, add_bos=True)
    assert with_bos.encode(plain)[0] == bos and with_bos.encode(plain)[1] != bos
    # The chat template writes BOS itself: add_bos=True must not add a second one.
    chat = with_bos.render([{"role": "user", "content": "hi"}])
    ids = with_bos.encode(chat)
    assert ids[0] == bos and ids[1] != bos
    # A tokenizer that adds BOS on top of a template that has one: still a single BOS.
    auto = TransformersBackend(model, tiny_tokenizer(add_bos_itself=True), add_bos=None)
    ids = auto.encode(chat)
    assert ids[0] == bos and ids[1] != bos
    assert TransformersBackend(model, no_bos_tok, add_bos=False).encode(plain)[0] != bos


def test_loglikelihood_matches_a_direct_forward_pass(model, tok):
    backend = TransformersBackend(model, tok, batch_size=3)
    reqs = [LoglikelihoodRequest(continuation=c, context="The answer is")
            for c in (" A", " B", " hello", " 42")]
    got = backend.loglikelihood(reqs)
    for req, out in zip(reqs, got, strict=True):
        ctx = backend.encode(req.context)
        cont = tok(req.continuation, add_special_tokens=False).input_ids
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        want = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
        assert out.logprob == pytest.approx(want, abs=1e-4)
        assert out.n_tokens == len(cont)


def test_prompt_longer_than_context_is_an_error_output_not_a_crash(model, tok):
    backend = TransformersBackend(model, tok, max_length=32)
    out = backend.generate([GenerationRequest(prompt="x" * 100, max_new_tokens=4),
                            GenerationRequest(prompt="ok", max_new_tokens=4)])
    assert out[0].finish_reason == "error" and "context" in out[0].error
    assert out[1].error is None


def test_identity_has_a_stable_model_digest(model, tok):
    a = TransformersBackend(model, tok).identity()["model_digest"]
    b = TransformersBackend(model, tok).identity()["model_digest"]
    other = TransformersBackend(tiny_llama(tok, seed=2), tok).identity()["model_digest"]
    assert a == b and a != other
