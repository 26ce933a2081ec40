"""Phase 3's declarations (issue 15): the [[modifiers]] tables of a profile, the tool-call
fixture the automation modifier is trained and judged on, the training records made from a
benchmark's train split, and the adapter-size rule. Fast: no model is loaded."""

from __future__ import annotations

import json
import typing

import pytest

from cogumi import thresholds
from cogumi.data.sources import DOMAINS
from cogumi.evaluation import bfcl, load_task
from cogumi.evaluation.splits import SplitOverlapError, assert_disjoint, prompt_text
from cogumi.gates import resolve_gates
from cogumi.profile import ModifierConfig, ProfileError, load_profile, parse_profile
from cogumi.registry import get_phase

from .conftest import ROOT
from .test_threshold_rule import write_safetensors

TINY = (ROOT / "cogumi" / "profiles" / "tiny.toml").read_text()
BENCH = ROOT / "fixtures" / "benchmarks"
# tiny.toml without its [[modifiers]] tables (they are the file's last section).
BARE = TINY[: TINY.index("[[modifiers]]")]

CODE = """
[[modifiers]]
name = "code"
phase = "3A"
domains = ["code"]
task = "code"
lora_rank = 8
lora_alpha = 16
epochs = 1
learning_rate = 1e-3
"""


def profile_with(*tables: str):
    return parse_profile(BARE + "".join(tables), "test.toml")


# ------------------------------------------------------------------------------ profile
def test_tiny_declares_the_three_modifiers_one_per_phase():
    profile = load_profile("tiny")
    assert [(m.phase, m.name, m.task) for m in profile.modifiers] == [
        ("3A", "code", "code"), ("3B", "reasoning", "math"), ("3C", "automation", "bfcl")]
    assert profile.modifier_for("3C").task_data == "fixtures/benchmarks/bfcl"
    for phase_id in ("3A", "3B", "3C"):
        assert get_phase(phase_id).entry == "cogumi.phases.modifier:run"
        assert get_phase(phase_id).inputs == ("2C", "2E", "0")


def test_modifier_domains_are_the_curated_domains():
    field = ModifierConfig.model_fields["domains"].annotation
    (literal,) = typing.get_args(field)
    assert set(typing.get_args(literal)) == set(DOMAINS)


@pytest.mark.parametrize("tables, message", [
    ((CODE, CODE.replace('phase = "3A"', 'phase = "3B"')), "name 'code' is used by an earlier"),
    ((CODE, CODE.replace('name = "code"', 'name = "code2"')), "phase 3A is built by an earlier"),
    ((CODE.replace('name = "code"', 'name = "base"'),), "name 'base' is the route"),
    ((CODE.replace('name = "code"', 'name = "Code!"'),), "modifiers.0.name"),
    ((CODE.replace('task = "code"', 'task = "bfcl"'),), "task 'bfcl' is not in [eval]"),
    ((CODE.replace('task = "code"', 'task = "code"\ntask_data = "x.jsonl"'),),
     "[eval] code already names"),
    ((CODE.replace('domains = ["code"]', 'domains = []'),), "nothing to train on"),
    ((CODE.replace('domains = ["code"]', 'domains = ["coding"]'),), "modifiers.0.domains.0"),
    ((CODE.replace('lora_rank = 8', 'lora_rank = 0'),), "modifiers.0.lora_rank"),
    ((CODE.replace('epochs = 1', 'epochs = 1\nepoch = 2'),), "unknown key 'modifiers.0.epoch'"),
    ((CODE.replace('phase = "3A"', 'phase = "4A"'),), "modifiers.0.phase"),
])
def test_bad_modifier_tables_are_one_line_errors_naming_the_key(tables, message):
    with pytest.raises(ProfileError) as err:
        profile_with(*tables)
    text = str(err.value)
    assert text.startswith("test.toml: ") and "\n" not in text
    assert message in text, text


def test_a_new_domain_is_a_profile_change():
    science = CODE.replace('name = "code"', 'name = "science"').replace(
        'domains = ["code"]', 'domains = ["science"]').replace('task = "code"', 'task = "mmlu"')
    profile = profile_with(science.replace('phase = "3A"', 'phase = "3B"'), CODE)
    assert {m.name for m in profile.modifiers} == {"science", "code"}
    assert profile.modifier_for("3B").domains == ["science"]
    assert profile.modifier_for("3C") is None


def test_two_modifiers_on_one_task_share_its_evaluation_file():
    auto = CODE.replace('task = "code"', 'task = "bfcl"\ntask_data = "a"')
    with pytest.raises(ProfileError, match="another task_data"):
        profile_with(auto, auto.replace('"3A"', '"3B"').replace('"code"', '"c2"', 1)
                     .replace('task_data = "a"', 'task_data = "b"'))


# ------------------------------------------------------------------------------ fixture
@pytest.fixture(scope="module")
def tool_tasks():
    return (load_task("bfcl", BENCH / "bfcl"), load_task("bfcl", BENCH / "bfcl_train",
                                                         name="bfcl-train"))


def test_tool_call_files_are_what_the_generator_writes(tmp_path):
    from fixtures.tool_calls import write_tool_call_benchmarks
    for path in write_tool_call_benchmarks(tmp_path, 0):
        rel = path.relative_to(tmp_path)
        assert path.read_bytes() == (BENCH / rel).read_bytes(), rel


def test_tool_call_splits_are_disjoint(tool_tasks):
    from fixtures.synthetic import split_of
    from fixtures.tool_calls import N_EVAL, N_TRAIN, draw
    evaluation, train = tool_tasks
    assert (len(evaluation), len(train)) == (N_EVAL, N_TRAIN)
    assert not any(it.malformed for it in evaluation.items + train.items)
    eval_items, train_items = draw(0, "eval", N_EVAL), draw(0, "train", N_TRAIN)
    assert {split_of(i.key) for i in eval_items} == {"eval"}
    assert {split_of(i.key) for i in train_items} == {"train"}
    assert not {i.key for i in eval_items} & {i.key for i in train_items}
    assert not {it.id for it in evaluation.items} & {it.id for it in train.items}
    # The same check every phase applies to its training data: by id and by normalised text.
    assert_disjoint(((it.id, prompt_text(it)) for it in train.items), [evaluation], "train")
    with pytest.raises(SplitOverlapError):
        assert_disjoint([("x", prompt_text(evaluation.items[3]))], [evaluation], "train")
    # Every function of the fixture is asked in both splits (only the arguments differ).
    names = {it.fields["function"][0]["name"] for it in evaluation.items}
    assert names == {it.fields["function"][0]["name"] for it in train.items}


def test_reference_answers_pass_bfcls_checker_and_a_changed_argument_fails(tool_tasks):
    from cogumi.phases.common import reference_response
    evaluation, _ = tool_tasks
    for item in evaluation.items:
        text = reference_response(evaluation, item)
        calls, why = bfcl.decode(text, item.category)
        assert calls is not None, (text, why)
        assert bfcl.check(item, calls)[0], text
    item = evaluation.items[0]
    (name, params), = item.reference[0].items()
    wrong = {name: {k: (v[0] + 1 if isinstance(v[0], int) else v[0] + "x")
                    for k, v in params.items()}}
    assert not bfcl.check(item, [wrong])[0]


def test_train_split_items_become_records_in_the_evaluation_prompt(tool_tasks):
    from cogumi.phases.common import task_records
    _, train = tool_tasks
    records, excluded = task_records(train, "bfcl-train")
    assert len(records) == len(train.items) and not excluded
    r = records[0]
    messages = train.messages(train.items[0])
    assert r["system"] == messages[0]["content"] and r["instruction"] == messages[1]["content"]
    assert r["response"].startswith("[" + train.items[0].fields["function"][0]["name"] + "(")
    code = load_task("code", BENCH / "code_train.jsonl")
    code_records, _ = task_records(code, "code-train")
    first = code.items[0].fields
    assert code_records[0]["response"] == (f"```python\n{first['prompt']}"
                                           f"{first['canonical_solution']}```")


# ------------------------------------------------------------------------ adapter size
def test_lora_budget_scales_the_seed_by_lora_parameters_per_rank(tmp_path):
    model = tmp_path / "2E" / "model"
    model.mkdir(parents=True)
    write_safetensors(model / "model.safetensors", {
        "model.embed_tokens.weight": ("F32", [1000, 64]),
        "model.layers.0.self_attn.q_proj.weight": ("F32", [64, 64]),
        "model.layers.0.mlp.down_proj.weight": ("F32", [64, 256]),
        "model.layers.0.input_layernorm.weight": ("F32", [64])})
    mb, how = thresholds.compute("lora_budget_mb", {"model_from": "2E", "seed_mb": 47,
                                                    "seed_parameters_per_rank": 2621440},
                                 tmp_path)
    assert mb == pytest.approx(47 * ((64 + 64) + (64 + 256)) / 2621440)
    assert "448 LoRA parameters per rank over 2 Linear" in how


def test_size_gates_follow_the_rule_on_tiny_and_the_seed_on_8b(tmp_path):
    model = tmp_path / "2E" / "model"
    model.mkdir(parents=True)
    config = json.loads((ROOT / "fixtures" / "tiny-llama" / "config.json").read_text())
    h, m, kv = config["hidden_size"], config["intermediate_size"], 4 * 64
    shapes = {}
    for i in range(config["num_hidden_layers"]):
        for name, shape in (("q", [h, h]), ("k", [kv, h]), ("v", [kv, h]), ("o", [h, h]),
                            ("gate", [m, h]), ("up", [m, h]), ("down", [h, m])):
            shapes[f"model.layers.{i}.{name}_proj.weight"] = ("F32", shape)
    write_safetensors(model / "model.safetensors", shapes)
    per_rank = config["num_hidden_layers"] * (4 * h + 2 * (kv + h) + 3 * (m + h))
    for phase_id, seed_mb in (("3A", 47), ("3B", 48), ("3C", 40)):
        size = {g.metric: g for g in resolve_gates(phase_id, load_profile("tiny"),
                                                   runs_dir=tmp_path)}["size_mb"]
        assert size.threshold == pytest.approx(seed_mb * per_rank / 2621440)
        seed = {g.metric: g for g in resolve_gates(phase_id, load_profile("llama-3.1-8b"),
                                                   runs_dir=tmp_path)}["size_mb"]
        assert seed.threshold == seed_mb


def test_modifier_gates_name_teacher_relative_not_gpt4():
    for phase_id in ("3A", "3B", "3C"):
        gates = {g.metric: g for g in resolve_gates(phase_id, load_profile("tiny"))}
        assert {"gain_lower", "teacher_relative", "size_mb", "off_domain.worst_delta_lower",
                "task.lower95_above_chance"} == set(gates)
        assert not gates["teacher_relative"].waived  # tiny waits for its teacher, unwaived
        assert "gpt4_relative" not in get_phase(phase_id).metrics
