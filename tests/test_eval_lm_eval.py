"""lm-eval is the independent cross-check: the same files as lm-eval task YAMLs, run by
``lm_eval.simple_evaluate`` on the same checkpoint, must give the same prompts, the same
option log-likelihoods, the same greedy generations, and so the same scores as ours.

Uses the tiny fixture model and benchmark files when they exist (fixtures/tiny-llama,
fixtures/benchmarks), else a random tiny Llama and files written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("torch")

from cogumi.evaluation import GenerationSettings, TransformersBackend, evaluate, load_task  # noqa: E402
from cogumi.evaluation.answers import extract_math_answer  # noqa: E402
from cogumi.evaluation.lm_eval_bridge import (  # noqa: E402
    cross_check,
    run_lm_eval,
    sample_stderr,
    task_yaml,
)
from cogumi.evaluation.testing import tiny_llama, tiny_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_MODEL = ROOT / "fixtures" / "tiny-llama"
FIXTURE_BENCH = ROOT / "fixtures" / "benchmarks"
LIMIT = 12
MAX_NEW = 12


def _model_and_tasks(tmp_path):
    if (FIXTURE_MODEL / "config.json").exists() and (FIXTURE_BENCH / "mmlu.jsonl").exists():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(FIXTURE_MODEL)
        model = AutoModelForCausalLM.from_pretrained(FIXTURE_MODEL).eval()
        paths = {k: FIXTURE_BENCH / f"{k}.jsonl" for k in ("math", "mmlu")}
    else:
        tok = tiny_tokenizer()
        model = tiny_llama(tok, seed=3)
        paths = {"math": tmp_path / "math.jsonl", "mmlu": tmp_path / "mmlu.jsonl"}
        paths["math"].write_text("\n".join(json.dumps(
            {"problem": f"What is {i} + {i}?", "level": "Level 1", "type": "Algebra",
             "solution": f"$\\boxed{{{2 * i}}}$"}) for i in range(LIMIT)))
        paths["mmlu"].write_text("\n".join(json.dumps(
            {"question": f"Which is item {i}?", "subject": "formal_logic",
             "choices": ["one", "two words", "three", "four"], "answer": i % 4}) for i in range(LIMIT)))
    return model, tok, [load_task(k, p) for k, p in paths.items()]


def test_lm_eval_agrees_with_our_scores_item_by_item(tmp_path):
    model, tok, tasks = _model_and_tasks(tmp_path)
    ours = evaluate(TransformersBackend(model, tok, batch_size=16), tasks,
                    GenerationSettings(max_new_tokens=MAX_NEW), limit=LIMIT)
    theirs = run_lm_eval(model, tok, tasks, tmp_path / "lm", max_new_tokens=MAX_NEW, limit=LIMIT)
    check = cross_check(ours, theirs)
    json.dumps(check)  # the phase writes it as JSON: plain types only
    assert check["mmlu"]["items"] == LIMIT and check["math"]["items"] == LIMIT
    assert check["mmlu"]["disagreements"] == []
    assert check["math"]["disagreements"] == []
    assert check["mmlu"]["ours"] == pytest.approx(check["mmlu"]["lm_eval"])
    # Issue 3's criterion, for both tasks: lm-eval's score within one standard error of ours.
    assert check["math"]["lm_eval"] is not None
    assert check["math"]["within_one_stderr"] and check["mmlu"]["within_one_stderr"]


def test_yaml_points_at_the_same_local_file(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"question": "q", "subject": "s", "choices": ["a", "b"], "answer": 0}))
    text = task_yaml(load_task("mmlu", path), 8)
    assert "dataset_path: json" in text and str(path.resolve()) in text
    assert 'gen_prefix: "The answer is"' in text


def test_math_yaml_carries_stop_strings_and_a_boxed_target(tmp_path):
    import yaml

    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "level": "Level 1", "type": "Algebra",
                                "solution": "So $\\boxed{2}$."}))
    spec = yaml.safe_load(task_yaml(load_task("math", path), 8, stop=("\nQuestion:",)))
    assert spec["generation_kwargs"]["until"] == ["\nQuestion:"]
    assert "boxed{" in spec["doc_to_target"]
    from lm_eval.filters.extraction import RegexFilter

    # lm-eval's own filter, with our extractor's priority: boxed, then "answer is", then the
    # last number (a base model that writes "52 - 17 = 35 marbles." is scored on 35).
    found = RegexFilter(spec["filter_list"][0]["filter"][0]["regex_pattern"]).apply([[
        "so The answer is $\\boxed{1,024}$", "The answer is: -3.5.", " 52 - 17 = 35 marbles.",
        "\\boxed{7} and then 9", "went -5", "nothing"]], [{}])[0]
    assert found == ["1,024", "-3.5", "35", "7", "-5", "[invalid]"]
    texts = ["so The answer is $\\boxed{1,024}$", "The answer is: -3.5.", " 52 - 17 = 35 marbles.",
             "\\boxed{7} and then 9", "went -5"]
    ours = [extract_math_answer(t).answer for t in texts]
    assert [a.replace(",", "") for a in found[:5]] == [a.replace(",", "") for a in ours]


QA_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'assistant' %} {{ m['content'] | trim }}"
               "<|end|>\n{% else %}Question: {{ m['content'] | trim }}\nAnswer:{% endif %}"
               "{% endfor %}")


def test_lm_eval_agrees_under_a_question_answer_layout_that_needs_bos(tmp_path):
    """Gemma's profile: a template whose generation prompt ends in "Answer:" and whose answer
    starts with a space, and a tokenizer that does not add BOS by itself. lm-eval renders
    the MMLU answer prefix inside the assistant turn ("Answer: The answer is") and asks the
    tokenizer for BOS; we must score exactly those prompts, or the two disagree item by item
    (what the gemma-270m 1B run showed before this was fixed)."""
    from cogumi.models import load_tokenizer
    from cogumi.profile import ModelConfig

    tiny_tokenizer(add_bos_itself=False).save_pretrained(tmp_path / "tok")
    cfg = ModelConfig(source="local", path=str(tmp_path / "tok"), add_bos=True,
                      chat_template=QA_TEMPLATE, parameters=1e5)
    tok = load_tokenizer(cfg, Path("/"))
    assert tok("a").input_ids[0] == tok.bos_token_id
    model = tiny_llama(tok, seed=5)
    tasks = _model_and_tasks(tmp_path)[2]
    ours = evaluate(TransformersBackend(model, tok, batch_size=16, add_bos=True), tasks,
                    GenerationSettings(max_new_tokens=MAX_NEW), limit=LIMIT)
    rec = next(r for r in ours.records if r["kind"] == "mmlu")
    assert rec["loglik_context"].endswith("\nAnswer: The answer is")
    theirs = run_lm_eval(model, tok, tasks, tmp_path / "lm", max_new_tokens=MAX_NEW,
                         limit=LIMIT, add_bos=True)
    check = cross_check(ours, theirs)
    assert check["mmlu"]["disagreements"] == [] and check["math"]["disagreements"] == []
    assert check["math"]["within_one_stderr"] and check["mmlu"]["within_one_stderr"]


def test_sample_stderr_is_lm_eval_mean_stderr():
    assert sample_stderr([1.0, 0.0, 1.0, 0.0]) == pytest.approx((1 / 3) ** 0.5 / 2)
    assert sample_stderr([1.0]) == 0.0 and sample_stderr([0.0, 0.0, 0.0]) == 0.0
