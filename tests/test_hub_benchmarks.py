"""The llama-3.1-8b profile's evaluation sets (GSM8K, MATH, HumanEval, MMLU) and 1B's code
prompts (MBPP's train split) by hub id, offline: read from `datasets`' local cache, laid out
by fixtures/hub_cache.py with synthetic rows in each dataset's real columns, through the
same task loader and parsers as local files. Nothing here reaches the network."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from cogumi import preflight
from cogumi.data.sources import SchemaError
from cogumi.evaluation.lm_eval_bridge import write_lm_eval_tasks
from cogumi.evaluation.runner import build_program
from cogumi.evaluation.splits import SplitOverlapError, assert_disjoint, prompt_text
from cogumi.evaluation.tasks import BenchmarkFormatError, HubDataset, load_task
from cogumi.phases.common import eval_tasks
from cogumi.phases.self_consistency import _code_training_task
from cogumi.profile import ProfileError, load_profile, parse_profile
from cogumi.registry import get_phase
from cogumi.runner import PhaseContext, PhaseInputError
from fixtures.hub_cache import (
    HUB_BENCHMARKS,
    synthetic_eval_rows,
    write_dataset_cache,
    write_seed_benchmarks,
)

from .conftest import ROOT

LLAMA = load_profile("llama-3.1-8b")


def _ctx(tmp_path, profile=LLAMA, phase="1B"):
    return PhaseContext(profile=profile, phase=get_phase(phase), out_dir=tmp_path,
                        runs_dir=tmp_path, console=Console(quiet=True))


def test_the_profile_names_the_four_benchmarks_and_mbpp_by_their_hub_ids():
    named = {key: (v.hub_id, v.configs, v.split) for key, v in LLAMA.eval.benchmarks()}
    assert named == {
        "math": ("EleutherAI/hendrycks_math", HUB_BENCHMARKS["EleutherAI/hendrycks_math"][1],
                 "test"),
        "mmlu": ("cais/mmlu", ("all",), "test"),
        "code": ("openai/openai_humaneval", (None,), "test"),  # its only config
        "gsm8k": ("openai/gsm8k", ("main",), "test"),
    }
    sc = LLAMA.self_consistency.code_prompts
    assert (sc.hub_id, sc.configs, sc.split, sc.schema_) == (
        "google-research-datasets/mbpp", ("full",), "train", "mbpp")


def test_the_suite_loads_by_hub_id_offline(offline_cache, tmp_path):
    write_seed_benchmarks(offline_cache, 3)
    tasks = {t.name: t for t in eval_tasks(_ctx(tmp_path))}
    assert {n: (t.kind, t.benchmark, len(t)) for n, t in tasks.items()} == {
        "math": ("math", "math", 3 * 7),  # three rows in each of the seven subjects
        "mmlu": ("mmlu", "mmlu", 3),
        "code": ("code", "code", 3),
        "gsm8k": ("math", "gsm8k", 3),
    }
    gsm8k = synthetic_eval_rows("gsm8k", 3, config="main")
    assert [it.reference for it in tasks["gsm8k"].items] == [
        r["answer"].rsplit("#### ", 1)[1] for r in gsm8k]
    assert tasks["gsm8k"].answer_type == "number"
    assert tasks["math"].items[3].id == "hub:EleutherAI/hendrycks_math[counting_and_probability/test]:0"
    assert tasks["math"].items[3].category == "Counting And Probability"
    assert [it.reference for it in tasks["mmlu"].items] == [
        r["answer"] for r in synthetic_eval_rows("mmlu", 3, config="all")]
    assert tasks["code"].items[0].id == "HumanEval/0"
    assert tasks["gsm8k"].path == "hub:openai/gsm8k[main/test]"


def test_a_hub_task_is_read_as_the_same_rows_in_a_local_file_are(offline_cache, tmp_path):
    for benchmark, hub_id, config in (("gsm8k", "openai/gsm8k", "main"),
                                      ("mmlu", "cais/mmlu", "all"),
                                      ("humaneval", "openai/openai_humaneval", "openai_humaneval"),
                                      ("math", "EleutherAI/hendrycks_math", "algebra")):
        rows = synthetic_eval_rows(benchmark, 4, seed=1, config=config)
        write_dataset_cache(offline_cache, hub_id, rows, split="test", config=config)
        path = tmp_path / f"{benchmark}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        from_file = load_task(benchmark, path)
        from_hub = load_task(benchmark, hub=HubDataset(hub_id, "test", (config,)))
        assert [from_file.messages(i) for i in from_file.items] == [
            from_hub.messages(i) for i in from_hub.items], benchmark
        assert [i.reference for i in from_file.items] == [i.reference for i in from_hub.items]
        assert from_hub.digest != from_file.digest  # bound to the hub id as well as the rows


def test_a_hub_benchmark_without_its_columns_is_refused_naming_them(offline_cache, tmp_path):
    write_dataset_cache(offline_cache, "cais/mmlu", synthetic_eval_rows("gsm8k", 2),
                        split="test", config="all")
    with pytest.raises(SchemaError) as err:
        load_task("mmlu", hub=HubDataset("cais/mmlu", "test", ("all",)))
    assert str(err.value) == (
        "hub dataset cais/mmlu (config all, split test) has no column 'subject', 'choices' of "
        "schema 'mmlu' (its columns: question, answer)")
    # ... in a phase: one line naming the profile and key; and in the preflight, before any.
    write_seed_benchmarks(offline_cache, 1)
    write_dataset_cache(offline_cache, "cais/mmlu", synthetic_eval_rows("gsm8k", 2),
                        split="test", config="all")
    with pytest.raises(PhaseInputError, match=r"^cogumi/profiles/llama-3.1-8b.toml: \[eval\] "
                                              r"mmlu: hub dataset cais/mmlu \(config all"):
        eval_tasks(_ctx(tmp_path))
    assert preflight.benchmark_column_problems(LLAMA, ["1A"]) == [
        "[eval] mmlu in cogumi/profiles/llama-3.1-8b.toml: hub dataset cais/mmlu (config all, "
        "split test) has no column 'subject', 'choices' of schema 'mmlu' (its columns: "
        "question, answer); name a dataset in that schema, or set its schema"]


def test_a_bad_hub_row_names_its_row(offline_cache):
    rows = synthetic_eval_rows("gsm8k", 3, config="main")
    rows[1]["answer"] = "no final number"
    write_dataset_cache(offline_cache, "openai/gsm8k", rows, split="test", config="main")
    hub = HubDataset("openai/gsm8k", "test", ("main",))
    with pytest.raises(BenchmarkFormatError) as err:
        load_task("gsm8k", hub=hub)
    assert err.value.problems == ["hub:openai/gsm8k[main/test] row 1: field 'answer' does not "
                                  "end with '#### N' (N a number)"]
    kept = load_task("gsm8k", hub=hub, on_error="record")
    assert [i.malformed is not None for i in kept.items] == [False, True, False]


def test_an_uncached_hub_benchmark_is_listed_by_the_preflight(offline_cache):
    lines = preflight.hub_problems(LLAMA, ["1B"])
    assert [line.split(" in cogumi/")[0] for line in lines[:-1]] == [
        "dataset EleutherAI/hendrycks_math (configs algebra, counting_and_probability, "
        "geometry, intermediate_algebra, number_theory, prealgebra, precalculus of split test; "
        "[eval] math)",
        "dataset cais/mmlu (config all of split test; [eval] mmlu)",
        "dataset openai/openai_humaneval (split test; [eval] code)",
        "dataset openai/gsm8k (config main of split test; [eval] gsm8k)",
        "dataset google-research-datasets/mbpp (config full of split train; "
        "self_consistency.code_prompts)",
    ]
    write_dataset_cache(offline_cache, "EleutherAI/hendrycks_math",
                        synthetic_eval_rows("math", 1), split="test", config="geometry")
    assert "(configs algebra, counting_and_probability, intermediate_algebra," in \
        preflight.hub_problems(LLAMA, ["1B"])[0]  # geometry is cached now
    assert preflight.hub_problems(LLAMA, ["0"])[-1].startswith("dataset Anthropic/hh-rlhf")


def test_no_file_the_profile_names_is_missing():
    phases = ["0", "1A", "1B", "2A", "2B", "2C", "2D", "2E", "2F"]
    assert preflight.missing_files(LLAMA, phases) == []


MBPP_ROW = {  # a row in MBPP's "full" columns: the entry point is not the first call
    "task_id": 702, "text": "Write a function to find the shared elements of two lists.",
    "code": "import math\r\ndef helper(x):\r\n  return set(x)\r\ndef shared(a, b):\r\n"
            "  return tuple(helper(a) & helper(b))",
    "test_list": ["assert set(shared((3, 4, 5, 6), (5, 7, 4, 10))) == set((4, 5))",
                  "assert set(shared((1, 2), (2, 9))) == {2}"],
    "test_setup_code": "", "challenge_test_list": []}


def _run(program: str) -> None:
    exec(compile(program, "<mbpp>", "exec"), {})  # trusted: the fixture's own code


def test_an_mbpp_row_becomes_a_humaneval_shaped_task_its_solution_passes(tmp_path):
    path = tmp_path / "mbpp.jsonl"
    path.write_text(json.dumps(MBPP_ROW) + "\n")
    item = load_task("mbpp", path).items[0]
    assert (item.id, item.fields["entry_point"]) == ("mbpp/702", "shared")
    assert item.fields["prompt"] == (
        'def shared(a, b):\n    """Write a function to find the shared elements of two lists.\n'
        '    assert set(shared((3, 4, 5, 6), (5, 7, 4, 10))) == set((4, 5))\n'
        '    assert set(shared((1, 2), (2, 9))) == {2}\n    """\n')
    _run(build_program(item, MBPP_ROW["code"]))  # the reference solution passes its tests
    with pytest.raises(AssertionError):
        _run(build_program(item, "def shared(a, b):\n    return (4,)\n"))
    bad = dict(MBPP_ROW, test_list=["assert 1 == 1"])
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"mbpp.jsonl:1: no function of field 'code' "
                                                   r"\(helper, shared\) is called"):
        load_task("mbpp", path)


def test_mbpp_train_prompts_are_disjoint_from_the_suite_and_a_test_split_is_not(
        offline_cache, tmp_path):
    write_seed_benchmarks(offline_cache, 3)
    ctx = _ctx(tmp_path)
    prompts = _code_training_task(ctx)
    assert (prompts.benchmark, len(prompts)) == ("mbpp", 3)
    for item in prompts.items:  # the synthetic solutions pass their own converted tests
        _run(build_program(item, item.fields["canonical_solution"]))
    assert_disjoint(((i.id, prompt_text(i)) for i in prompts.items), eval_tasks(ctx), "1B")
    # Evaluating on the same split 1B generates from is refused, by id.
    same = LLAMA.model_copy(update={"eval": LLAMA.eval.model_copy(
        update={"code": LLAMA.self_consistency.code_prompts})})
    with pytest.raises(SplitOverlapError, match="3 item.*mbpp/601 \\(id of code:mbpp/601\\)"):
        assert_disjoint(((i.id, prompt_text(i)) for i in prompts.items),
                        eval_tasks(_ctx(tmp_path, same)), "1B")


def test_lm_eval_reads_a_hub_task_from_the_rows_we_read(offline_cache, tmp_path):
    write_seed_benchmarks(offline_cache, 2)
    tasks = [t for t in eval_tasks(_ctx(tmp_path)) if t.name in ("mmlu", "gsm8k")]
    write_lm_eval_tasks(tasks, tmp_path / "tasks")
    for task in tasks:
        data = tmp_path / "tasks" / f"cogumi_{task.name}.items.jsonl"
        assert [json.loads(line) for line in data.read_text().splitlines()] == [
            i.fields for i in task.items]
        assert str(data.resolve()) in (tmp_path / "tasks" / f"cogumi_{task.name}.yaml").read_text()


@pytest.mark.parametrize("table, error", [
    ('math = { hub_id = "a/b", schema = "mmlu" }', "eval.math.schema = 'mmlu' is not a math schema"),
    ('math = { hubid = "a/b" }', "missing key 'eval.math.hub_id'; unknown key 'eval.math.hubid'"),
])
def test_a_hub_table_in_the_wrong_shape_is_refused_naming_the_key(table, error):
    text = (ROOT / "cogumi/profiles/tiny.toml").read_text()
    text = text.replace('math = "fixtures/benchmarks/math.jsonl"', table)
    with pytest.raises(ProfileError) as err:
        parse_profile(text, "x.toml")
    assert error in str(err.value) and "\n" not in str(err.value)
