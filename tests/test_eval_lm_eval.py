"""lm-eval is the independent cross-check: the same files as lm-eval task YAMLs, run by
``lm_eval.simple_evaluate`` on the same checkpoint, must give the same prompts, the same
option log-likelihoods and chosen options, and the same greedy generations as ours, item
by item. Its MATH answers are extracted by lm-eval's own shipped filter; where that and
our extractor score the same generation differently, it is reported, not gated.

Uses the tiny fixture model and benchmark files when they exist (fixtures/tiny-llama,
fixtures/benchmarks), else a random tiny Llama and files written here."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("torch")

from lm_eval.api.model import LM  # noqa: E402

from cogumi.evaluation import GenerationSettings, TransformersBackend, evaluate, load_task  # noqa: E402
from cogumi.evaluation.answers import extract_math_answer  # noqa: E402
from cogumi.evaluation.lm_eval_bridge import (  # noqa: E402
    MATH_SCORING_SOURCE,
    cross_check,
    run_lm_eval,
    sample_stderr,
    task_yaml,
    write_lm_eval_tasks,
)
from cogumi.evaluation.testing import ScriptedBackend, tiny_llama, tiny_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_MODEL = ROOT / "fixtures" / "tiny-llama"
FIXTURE_BENCH = ROOT / "fixtures" / "benchmarks"
LIMIT = 12
MAX_NEW = 12


def _model_and_tasks(tmp_path):
    if (FIXTURE_MODEL / "config.json").exists() and (FIXTURE_BENCH / "mmlu.jsonl").exists():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(FIXTURE_MODEL)
        model = AutoModelForCausalLM.from_pretrained(FIXTURE_MODEL, dtype="float32").eval()
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


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory):
    """Our evaluation and lm-eval's on the same model and files, once for the module."""
    tmp = tmp_path_factory.mktemp("lm_eval")
    model, tok, tasks = _model_and_tasks(tmp)
    ours = evaluate(TransformersBackend(model, tok, batch_size=16), tasks,
                    GenerationSettings(max_new_tokens=MAX_NEW), limit=LIMIT)
    theirs = run_lm_eval(model, tok, tasks, tmp / "lm", max_new_tokens=MAX_NEW, limit=LIMIT)
    return ours, theirs


def test_lm_eval_agrees_with_our_evaluation_item_by_item(both_runs):
    ours, theirs = both_runs
    check = cross_check(ours, theirs)
    json.dumps(check)  # the phase writes it as JSON: plain types only
    mmlu, math_ = check["tasks"]["mmlu"], check["tasks"]["math"]
    assert mmlu["items"] == LIMIT and math_["items"] == LIMIT
    assert mmlu["disagreements"] == [] and math_["disagreements"] == []
    assert check["item_disagreements"] == 0
    # Same log-likelihoods and chosen options: the same MMLU score, exactly.
    assert mmlu["ours"] == pytest.approx(mmlu["lm_eval"]) and mmlu["within_one_stderr"]
    # Same generations: the MATH scores differ only by the items the two extractors score
    # differently, and each reported difference is one.
    diffs = check["extraction_differences"]
    assert diffs["count"] == len(diffs["items"])
    assert all(d["ours_correct"] != d["lm_eval_correct"] for d in diffs["items"])
    net = sum(d["ours_correct"] - d["lm_eval_correct"] for d in diffs["items"])
    assert math_["lm_eval"] is not None
    assert (math_["ours"] - math_["lm_eval"]) * LIMIT == pytest.approx(net)


def test_a_changed_prompt_or_loglikelihood_on_one_item_is_one_disagreement(both_runs):
    ours, theirs = both_runs
    changed = copy.deepcopy(ours)
    mmlu = [r for r in changed.records if r["task"] == "mmlu"]
    mmlu[2]["loglik_context"] += " "
    assert cross_check(changed, theirs)["item_disagreements"] == 1
    changed = copy.deepcopy(ours)
    mmlu = [r for r in changed.records if r["task"] == "mmlu"]
    mmlu[4]["loglik"][1] -= 0.01  # ten times the tolerance
    check = cross_check(changed, theirs)
    assert check["item_disagreements"] == 1
    (bad,) = check["tasks"]["mmlu"]["disagreements"]
    assert bad["item_id"] == mmlu[4]["item_id"] and "option 1 log-likelihood" in bad["differences"][0]
    # Within the stated tolerance is the same number.
    changed = copy.deepcopy(ours)
    [r for r in changed.records if r["task"] == "mmlu"][4]["loglik"][1] -= 1e-4
    assert cross_check(changed, theirs)["item_disagreements"] == 0
    # A changed generation is a disagreement, not an extraction difference.
    changed = copy.deepcopy(ours)
    [r for r in changed.records if r["task"] == "math"][0]["generations"][0] += " 7"
    check = cross_check(changed, theirs)
    assert check["item_disagreements"] == 1 and check["tasks"]["math"]["item_disagreements"] == 1


def test_an_item_lm_eval_did_not_run_is_a_disagreement(both_runs):
    ours, theirs = both_runs
    short = copy.deepcopy(theirs)
    short["samples"]["cogumi_math"] = short["samples"]["cogumi_math"][:-1]
    assert cross_check(ours, short)["item_disagreements"] == 1
    del short["samples"]["cogumi_math"]
    assert cross_check(ours, short)["item_disagreements"] == LIMIT


def test_math_yaml_uses_lm_eval_own_filter_stop_strings_and_a_boxed_target(tmp_path):
    import yaml

    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "level": "Level 1", "type": "Algebra",
                                "solution": "So $\\boxed{2}$."}))
    spec = yaml.safe_load(task_yaml(load_task("math", path), 8, stop=("\nQuestion:",)))
    assert spec["generation_kwargs"]["until"] == ["\nQuestion:"]
    assert "boxed{" in spec["doc_to_target"]
    # The filter and metric are the ones lm-eval ships for gsm8k-cot, as shipped.
    shipped = yaml.safe_load((Path(lm_eval.__file__).parent / MATH_SCORING_SOURCE[0]).read_text())
    assert spec["filter_list"] == [f for f in shipped["filter_list"]
                                   if f["name"] == MATH_SCORING_SOURCE[1]]
    assert spec["metric_list"] == shipped["metric_list"]


class _ScriptedLM(LM):
    """lm-eval's side of a scripted model: the same rendering as ScriptedBackend and the
    same answer for the same prompt, so only the two extractors can differ."""

    def __init__(self, backend, respond):
        super().__init__()
        self.backend, self.respond = backend, respond

    @property
    def tokenizer_name(self) -> str:
        return "scripted"

    def apply_chat_template(self, chat_history, add_generation_prompt=True):
        return self.backend.render(chat_history)

    def generate_until(self, requests):
        return [self.respond(None, r.args[0]) for r in requests]

    def loglikelihood(self, requests):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError


def test_a_generation_only_our_extractor_scores_is_an_extraction_difference(tmp_path):
    """ "52 - 17 = 35 marbles." has no "The answer is N.": lm-eval's gsm8k-cot strict-match
    finds nothing, our extractor takes the last number. Both sides generated the same text,
    so the runs agree; the extractors do not, and that is reported, not gated."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    path = tmp_path / "math.jsonl"
    problems = ["Tom had 52 marbles and lost 17. How many are left?", "What is 30 + 5?"]
    path.write_text("\n".join(json.dumps({"problem": p, "level": "Level 1", "type": "Algebra",
                                          "solution": "$\\boxed{35}$"}) for p in problems))
    task = load_task("math", path)
    answers = {"marbles": " 52 - 17 = 35 marbles.", "30 + 5": "30 + 5 = 35. The answer is 35."}

    def respond(_req, prompt):
        return next(a for k, a in answers.items() if k in prompt)

    backend = ScriptedBackend(respond)
    ours = evaluate(backend, [task], GenerationSettings(max_new_tokens=MAX_NEW))
    names = write_lm_eval_tasks([task], tmp_path / "tasks", MAX_NEW)
    theirs = simple_evaluate(model=_ScriptedLM(backend, respond), tasks=names,
                             task_manager=TaskManager(include_path=str(tmp_path / "tasks"),
                                                      include_defaults=False),
                             num_fewshot=0, apply_chat_template=True, log_samples=True,
                             bootstrap_iters=0)
    check = cross_check(ours, theirs)
    assert check["item_disagreements"] == 0
    assert check["tasks"]["math"]["ours"] == 1.0 and check["tasks"]["math"]["lm_eval"] == 0.5
    (diff,) = check["extraction_differences"]["items"]
    assert check["extraction_differences"]["count"] == 1
    assert diff["generation"] == answers["marbles"]
    assert diff["ours_extracted"] == "35" and diff["ours_rule"] == "last_number"
    assert diff["ours_correct"] is True and diff["lm_eval_correct"] is False
    assert diff["lm_eval_extracted"] == "[invalid]"
    assert extract_math_answer(answers["marbles"]).answer == "35"


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
    assert check["tasks"]["mmlu"]["items"] == LIMIT and check["tasks"]["math"]["items"] == LIMIT
    assert check["item_disagreements"] == 0, check["tasks"]


def test_sample_stderr_is_lm_eval_mean_stderr():
    assert sample_stderr([1.0, 0.0, 1.0, 0.0]) == pytest.approx((1 / 3) ** 0.5 / 2)
    assert sample_stderr([1.0]) == 0.0 and sample_stderr([0.0, 0.0, 0.0]) == 0.0
