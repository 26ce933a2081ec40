"""evaluate(): the contract the phases call. Metrics must follow from the verdicts, every
item must be recorded with its reason, and the report must say how numbers were made."""

from __future__ import annotations

import json

import pytest

from cogumi.evaluation import GenerationSettings, evaluate, load_task
from cogumi.evaluation.testing import ScriptedBackend


def write_jsonl(path, rows):
    path.write_bytes(b"\n".join(r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows))
    return path


def math_rows(n):
    return [{"problem": f"What is {i} + {i}?", "level": "Level 1",
             "type": "Algebra" if i % 2 else "Prealgebra",
             "solution": f"$\\boxed{{{2 * i}}}$"} for i in range(n)]


@pytest.fixture
def math_task(tmp_path):
    return load_task("math", write_jsonl(tmp_path / "math.jsonl", math_rows(4)))


def _problem_number(prompt: str) -> int:
    return int(prompt.split("What is ")[1].split(" ")[0])


def test_math_accuracy_uses_equivalence_not_string_equality(math_task):
    # Item 0 answered in a different notation (0.0 for 0), 1 right as a fraction (4/2),
    # 2 wrong, 3 with no answer at all.
    def respond(req, prompt):
        i = _problem_number(prompt)
        return {0: "The answer is 0.0", 1: "so \\boxed{\\frac{4}{2}}", 2: "The answer is 5",
                3: "I give up"}[i]

    report = evaluate(ScriptedBackend(respond), [math_task], GenerationSettings())
    assert report.metrics["math.accuracy"] == 0.5
    assert report.metrics["math.pass@1"] == 0.5
    assert report.metrics["math.n_items"] == 4
    reasons = [r["reasons"][0] for r in report.records]
    assert reasons == ["correct", "correct", "wrong_answer", "no_answer"]
    rules = [r["extraction_rules"][0] for r in report.records]
    assert rules == ["answer_is", "boxed", "answer_is", "none"]
    assert report.metrics["math.accuracy/Algebra"] == 0.5  # items 1 (right) and 3 (no answer)


def test_empty_and_undecodable_generations_are_failures_with_reasons(math_task):
    outs = {0: "", 1: b"\xff\xfe The answer is 2", 2: "   \n", 3: "The answer is 6"}
    backend = ScriptedBackend(lambda req, p: outs[_problem_number(p)])
    report = evaluate(backend, [math_task], GenerationSettings())
    reasons = [r["reasons"][0] for r in report.records]
    assert reasons == ["empty_generation", "invalid_utf8", "empty_generation", "correct"]
    assert len(report.records) == 4  # nothing dropped
    assert report.metrics["math.accuracy"] == 0.25
    assert report.metrics["math.failure_rate/empty_generation"] == 0.5


def test_malformed_items_count_as_failures(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", math_rows(2) + [b"{broken"])
    task = load_task("math", path, on_error="record")
    report = evaluate(ScriptedBackend(lambda r, p: f"The answer is {2 * _problem_number(p)}"),
                      [task], GenerationSettings())
    assert report.metrics["math.accuracy"] == pytest.approx(2 / 3)
    bad = report.records[2]
    assert bad["reasons"] == ["malformed_item"] and "invalid JSON" in bad["details"][0]


def test_mmlu_by_letter_and_by_loglikelihood(tmp_path):
    rows = [{"question": f"Q{i}", "subject": "logic", "choices": ["w", "x", "y", "z"], "answer": i}
            for i in range(4)]
    task = load_task("mmlu", write_jsonl(tmp_path / "q.jsonl", rows))

    def respond(req, prompt):  # always says B
        return "The answer is B"

    def loglik(req, ctx):  # prefers the reference letter for Q0 and Q3 only
        q = int(ctx.split("\nQ")[1][0])
        want = "ABCD"[q] if q in (0, 3) else "A" if q else "B"
        return 0.0 if req.continuation == " " + want else -5.0

    report = evaluate(ScriptedBackend(respond, loglik), [task], GenerationSettings())
    assert report.metrics["mmlu.accuracy"] == 0.25  # only Q1's answer is B
    assert report.metrics["mmlu.accuracy_loglik"] == 0.5
    assert report.records[0]["loglik_choice"] == "A"
    # Scored as " X" after the chat prompt plus "The answer is".
    assert all(r.endswith("The answer is") for r in [report.records[0]["prompt"] + "The answer is"])


def test_consistency_and_majority_over_k_samples(math_task):
    # Item 0: all k agree and are right; 1: 2 of 3 agree (equivalent notations count);
    # 2: all different; 3: all missing (never "consistent").
    table = {0: ["0", "0", "0.0"], 1: ["2", "4/2", "5"], 2: ["1", "2", "3"], 3: ["?", "?", "?"]}
    seen: dict[int, int] = {}

    def respond(req, prompt):
        i = _problem_number(prompt)
        j = seen.get(i, 0)
        seen[i] = j + 1
        a = table[i][j]
        return "no idea" if a == "?" else f"The answer is {a}"

    report = evaluate(ScriptedBackend(respond), [math_task],
                      GenerationSettings(samples=3, temperature=0.7, pass_k=(1, 3)))
    m = report.metrics
    assert m["math.consistency"] == 0.25
    assert m["math.pairwise_agreement"] == pytest.approx((1 + 1 / 3 + 0 + 0) / 4)
    assert m["math.consistency/Prealgebra"] == 0.5  # items 0 and 2
    assert m["math.maj@3"] == 0.5  # items 0 and 1 (majority 2 == 4/2)
    assert m["math.accuracy"] == pytest.approx((3 + 2 + 0 + 0) / 12)
    assert m["math.pass@3"] == 0.5
    assert m["consistency"] == 0.25  # pooled over the run's tasks (only math here)


def test_sample_seeds_are_distinct_and_order_independent(math_task):
    got = []
    backend = ScriptedBackend(lambda req, p: got.append((_problem_number(p), req.seed)) or "x")
    evaluate(backend, [math_task], GenerationSettings(samples=3, temperature=1.0, seed=7))
    first = sorted(got)
    got.clear()
    math_task.items.reverse()
    evaluate(backend, [math_task], GenerationSettings(samples=3, temperature=1.0, seed=7))
    assert sorted(got) == first
    assert len({s for _, s in first}) == 12


def test_code_task_runs_in_the_sandbox(tmp_path):
    rows = [{"task_id": f"T/{i}", "prompt": "def inc(x):\n    \"\"\"x+1\"\"\"\n",
             "canonical_solution": "    return x + 1\n",
             "test": "def check(c):\n    assert c(1) == 2\n", "entry_point": "inc"} for i in range(4)]
    task = load_task("code", write_jsonl(tmp_path / "c.jsonl", rows))
    answers = {
        "T/0": "```python\ndef inc(x):\n    return x + 1\n```",  # full function, fenced
        "T/1": "    return x + 1\n",  # body continuation, like HumanEval completions
        "T/2": "```python\ndef inc(x):\n    return x + 2\n```",  # wrong
        "T/3": "```python\nimport os\nos.remove('/etc/hostname')\n```",  # hostile
    }
    order = iter(answers.values())  # the four prompts are identical: answer in call order
    backend = ScriptedBackend(lambda req, p: next(order))
    report = evaluate(backend, [task], GenerationSettings(), workers=2)
    reasons = [r["reasons"][0] for r in report.records]
    assert reasons == ["passed", "passed", "wrong_answer", "forbidden"]
    assert report.metrics["code.pass@1"] == 0.5
    assert report.sandbox["isolation"] == "namespaces"


def test_report_write_has_items_and_definitions(math_task, tmp_path):
    backend = ScriptedBackend(lambda r, p: f"The answer is {2 * _problem_number(p)}")
    report = evaluate(backend, [math_task], GenerationSettings(max_new_tokens=8))
    out = report.write(tmp_path / "eval")
    meta = json.loads((out / "eval.json").read_text())
    assert meta["metrics"]["math.accuracy"] == 1.0
    assert "{task}.consistency" in meta["definitions"]
    assert meta["settings"]["max_new_tokens"] == 8
    assert meta["tasks"][0]["digest"] == math_task.digest
    assert meta["backend"]["backend"] == "scripted"
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(items) == 4
    need = {"task", "item_id", "prompt", "generations", "extracted", "verdicts", "reasons"}
    assert need <= set(items[0])
    assert items[0]["prompt"].startswith("[user] Solve the problem.")


def test_limit_and_cache(math_task, tmp_path):
    backend = ScriptedBackend(lambda r, p: "The answer is 0")
    s = GenerationSettings()
    first = evaluate(backend, [math_task], s, limit=2, cache_dir=tmp_path / "cache")
    assert first.metrics["math.n_items"] == 2 and backend.calls == 1 and not first.cached
    again = evaluate(backend, [math_task], s, limit=2, cache_dir=tmp_path / "cache")
    assert backend.calls == 1 and again.cached and again.metrics == first.metrics
    # Another setting is another key: generated anew.
    evaluate(backend, [math_task], GenerationSettings(max_new_tokens=9), limit=2,
             cache_dir=tmp_path / "cache")
    assert backend.calls == 2


def test_settings_are_validated():
    with pytest.raises(ValueError):
        GenerationSettings(samples=0)
    with pytest.raises(ValueError):
        GenerationSettings(temperature=-1)


def test_end_to_end_on_a_tiny_transformers_model(tmp_path, math_task):
    # The real backend through the whole contract: deterministic under greedy decoding.
    pytest.importorskip("torch")
    from cogumi.evaluation import TransformersBackend
    from cogumi.evaluation.testing import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    backend = TransformersBackend(tiny_llama(tok), tok, batch_size=4)
    s = GenerationSettings(max_new_tokens=8)
    a = evaluate(backend, [math_task], s)
    b = evaluate(backend, [math_task], s)
    assert a.metrics == b.metrics
    assert [r["generations"] for r in a.records] == [r["generations"] for r in b.records]
    assert a.records[0]["prompt"].startswith("<s><|start|>user\n")
    assert a.backend["model_digest"]
    a.write(tmp_path / "out")


def test_a_task_s_own_budget_replaces_the_settings_and_keys_the_cache(math_task, tmp_path):
    """GPQA's reasoning runs longer than GSM8K's: a task's max_new_tokens is what its requests
    ask for, its report says so, and the cache never serves one budget's answers for another."""
    import dataclasses

    asked = []
    backend = ScriptedBackend(lambda r, p: asked.append(r.max_new_tokens) or "The answer is 0")
    s = GenerationSettings(max_new_tokens=16)
    plain = evaluate(backend, [math_task], s, limit=2, cache_dir=tmp_path / "cache")
    assert asked == [16, 16] and "max_new_tokens" not in plain.tasks[0]
    longer = dataclasses.replace(math_task, max_new_tokens=64)
    report = evaluate(backend, [longer], s, limit=2, cache_dir=tmp_path / "cache")
    assert asked[2:] == [64, 64] and report.tasks[0]["max_new_tokens"] == 64
    evaluate(backend, [longer], s, limit=2, cache_dir=tmp_path / "cache")
    assert len(asked) == 4  # the same budget again: from the cache


def test_max_new_tokens_by_task_names_only_evaluated_tasks():
    from cogumi.profile import ProfileError, load_profile, parse_profile

    from .conftest import ROOT
    assert load_profile("qwen-coder-0.5b").eval.max_new_tokens_by_task == {"gpqa": 1024}
    text = (ROOT / "cogumi/profiles/tiny.toml").read_text()
    assert "\n[eval]\n" in text
    bad = text.replace("\n[eval]\n", "\n[eval]\nmax_new_tokens_by_task = { gpqa = 512 }\n", 1)
    with pytest.raises(ProfileError, match=r"max_new_tokens_by_task: \['gpqa'\] not in \[eval\]"):
        parse_profile(bad, "x.toml")
