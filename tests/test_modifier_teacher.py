"""Phase 3's teacher-written examples (issue 15): the modifier's own training prompts asked
of a fake OpenAI-compatible teacher on loopback, which answers some items right and some
wrong. Kept only when the verifier accepts (math answers, code tests in the sandbox, BFCL's
AST checker); the teacher sees the evaluation prompt only, never a reference; a rerun sends
nothing. No model is loaded: modifier_records is the part under test."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from .conftest import ChatTeacher, profile_with

N = 6  # items asked per modifier: half answered right, half wrong


class ScriptedTeacher(ChatTeacher):
    """Replies with the first scripted answer whose needle is in the last message."""

    def __init__(self):
        self.script: list[tuple[str, str]] = []
        super().__init__(lambda text: next((a for needle, a in self.script if needle in text),
                                           "no idea"), model_id="scripted")


# Curated math records stating their answer; no number of an answer appears in its question.
CURATED = [{"id": f"cur-math-{i}", "domain": "math", "source": "fixture-test",
            "instruction": f"A crate holds {a} apples and {b} pears. How many fruits are in "
                           f"the crate altogether?",
            "response": f"Add them. The answer is {a + b}."}
           for i, (a, b) in enumerate([(12, 19), (23, 48), (31, 26), (44, 17), (56, 29),
                                       (61, 38), (72, 15)])]
CURATED.append({"id": "cur-code-0", "domain": "code", "source": "fixture-test",
                "instruction": "Write a function that doubles x.",
                "response": "def double(x):\n    return 2 * x\n"})


@pytest.fixture
def setup(tmp_path):
    srv = ScriptedTeacher()
    profile, _ = profile_with(tmp_path, f"""
[teacher]
source = "endpoint"
base_url = "{srv.url}"
model = "scripted"
concurrency = 2
price_usd_per_mtok = [1.0, 4.0]
""")
    runs = tmp_path / "runs"
    (runs / "0").mkdir(parents=True)
    (runs / "0" / "curated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CURATED))
    yield srv, profile, runs
    srv.close()


def _records(profile, runs, phase_id, out_name, teacher_examples=N):
    from cogumi.phases.modifier import modifier_records, suite_tasks
    from cogumi.registry import get_phase
    from cogumi.runner import PhaseContext

    mods = [m.model_copy(update={"teacher_examples": teacher_examples, "max_records": None})
            for m in profile.modifiers]
    profile = profile.model_copy(update={"modifiers": mods})
    out = runs / phase_id / out_name
    out.mkdir(parents=True)
    ctx = PhaseContext(profile=profile, phase=get_phase(phase_id), out_dir=out, runs_dir=runs,
                       console=Console(quiet=True))
    mod = profile.modifier_for(phase_id)
    records, accounting = modifier_records(ctx, mod, suite_tasks(ctx))
    return ctx, mod, records, accounting


def _teacher_records(records):
    return [r for r in records if r.get("source") == "teacher"]


def _check(srv, profile, runs, phase_id, right_ids, wrong_ids, reason, references):
    ctx, mod, records, acc = _records(profile, runs, phase_id, "first")
    kept = _teacher_records(records)
    # Kept only when the verifier accepted; every prompt accounted for.
    assert {r["item_id"] for r in kept} == set(right_ids)
    assert all(r["verified_by"] for r in kept)
    rejected = [json.loads(x) for x in
                (ctx.out_dir / "teacher_rejected.jsonl").read_text().splitlines()]
    assert {r["id"].split(":", 1)[1] for r in rejected} == set(wrong_ids)
    assert {r["reason"] for r in rejected} == {reason}
    assert acc["teacher.requests"] == acc["teacher.sent"] == N == len(srv.bodies)
    assert acc["teacher.examples"] + acc["teacher.rejected"] == N
    assert acc["teacher.cost_usd"] == pytest.approx(N * (50 * 1.0 + 12 * 4.0) / 1e6)
    # The teacher saw the prompt (system and user turns only), never a reference.
    sent = json.dumps(srv.bodies)
    assert all({m["role"] for m in b["messages"]} <= {"system", "user"} for b in srv.bodies)
    for ref in references:
        assert ref not in sent, ref
    assert '"check"' not in sent and "ground_truth" not in sent
    # A rerun: every answer from the content cache, nothing sent.
    calls = len(srv.bodies)
    _, _, again, acc2 = _records(profile, runs, phase_id, "again")
    assert len(srv.bodies) == calls
    assert acc2["teacher.sent"] == 0 and acc2["teacher.cache_hits"] == N
    assert acc2["teacher.cost_usd"] == 0.0
    assert [r["id"] for r in _teacher_records(again)] == [r["id"] for r in kept]
    return ctx, kept


def _without_train_data(profile, phase_id):
    return profile.model_copy(update={"modifiers": [
        m.model_copy(update={"train_data": None}) if m.phase == phase_id else m
        for m in profile.modifiers]})


def test_reasoning_without_train_data_asks_the_curated_math_questions(setup):
    srv, profile, runs = setup
    profile = _without_train_data(profile, "3B")
    asked = [r for r in CURATED if r["domain"] == "math"][:N]
    for i, r in enumerate(asked):
        total = int(r["response"].split()[-1].rstrip("."))
        srv.script.append((r["instruction"], f"The answer is {total if i % 2 == 0 else total + 1}."))
    ctx, kept = _check(srv, profile, runs, "3B", [r["id"] for r in asked[::2]],
                       [r["id"] for r in asked[1::2]], "wrong_answer",
                       [r["response"] for r in asked])
    report = json.loads((ctx.out_dir / "teacher_usage.json").read_text())
    assert report["source"] == "curated math records" and report["kept"] == len(kept)


def test_reasoning_asks_its_train_data_problems_and_keeps_right_answers(setup):
    import re

    from cogumi.evaluation import load_task

    srv, profile, runs = setup
    train = load_task("math", profile_task_path(profile, "3B"))
    asked = train.items[:N]
    for i, it in enumerate(asked):
        total = int(re.search(r"\\boxed\{(-?\d+)\}", it.fields["solution"]).group(1))
        srv.script.append((it.fields["problem"],
                           f"The answer is {total if i % 2 == 0 else total + 1}."))
    ctx, kept = _check(srv, profile, runs, "3B", [it.id for it in asked[::2]],
                       [it.id for it in asked[1::2]], "wrong_answer",
                       [it.fields["solution"] for it in asked])
    report = json.loads((ctx.out_dir / "teacher_usage.json").read_text())
    assert report["kept"] == len(kept)


def test_code_asks_the_train_split_functions_and_keeps_what_passes_the_tests(setup):
    from cogumi.evaluation import load_task

    srv, profile, runs = setup
    train = load_task("code", profile_task_path(profile, "3A"))
    asked = train.items[:N]
    for i, it in enumerate(asked):
        body = it.fields["canonical_solution"] if i % 2 == 0 else "    return None\n"
        srv.script.append((it.fields["prompt"], f"```python\n{it.fields['prompt']}{body}```"))
    _check(srv, profile, runs, "3A", [it.id for it in asked[::2]], [it.id for it in asked[1::2]],
           "wrong_answer", [it.fields["canonical_solution"] for it in asked]
           + [it.fields["test"] for it in asked])


def test_automation_asks_bfcl_train_calls_and_keeps_what_the_ast_checker_accepts(setup):
    from cogumi.evaluation import load_task
    from cogumi.phases.common import reference_response

    srv, profile, runs = setup
    train = load_task("bfcl", profile_task_path(profile, "3C"))
    asked = [it for it in train.items if it.malformed is None][:N]
    for i, it in enumerate(asked):
        right = reference_response(train, it)
        wrong = right.replace("(", "_v2(", 1)  # a function that is not offered
        user = next(m["content"] for m in train.messages(it) if m["role"] == "user")
        srv.script.append((user, right if i % 2 == 0 else wrong))
    _check(srv, profile, runs, "3C", [it.id for it in asked[::2]], [it.id for it in asked[1::2]],
           "wrong_answer", [json.dumps(it.reference) for it in asked])


def test_no_teacher_examples_asks_nothing(setup):
    srv, profile, runs = setup
    ctx, _, records, acc = _records(profile, runs, "3B", "none", teacher_examples=0)
    assert not srv.bodies and not _teacher_records(records)
    assert acc["teacher.examples"] == 0 and "teacher_examples = 0" in acc["teacher.why_none"]
    assert (ctx.out_dir / "teacher_examples.jsonl").read_text() == ""


def profile_task_path(profile, phase_id):
    from .conftest import ROOT
    return ROOT / profile.modifier_for(phase_id).train_data


def test_an_evaluation_split_as_train_data_is_refused_before_the_teacher_is_asked(setup):
    from cogumi.runner import PhaseInputError

    srv, profile, runs = setup
    mods = [m.model_copy(update={"train_data": "fixtures/benchmarks/code.jsonl"})
            if m.phase == "3A" else m for m in profile.modifiers]
    with pytest.raises(PhaseInputError, match="would train on the test"):
        _records(profile.model_copy(update={"modifiers": mods}), runs, "3A", "bad")
    assert not srv.bodies
