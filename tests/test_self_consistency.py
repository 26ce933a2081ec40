"""Phase 1B's choice of code prompts: never an evaluation item (by id or text); limits are
stated. Curated records are held to the same rule (test_curated_records_...)."""

import pytest
from rich.console import Console

from cogumi.evaluation.splits import prompt_text
from cogumi.phases.common import refuse_evaluation_items
from cogumi.phases.self_consistency import _code_training_task
from cogumi.profile import load_profile
from cogumi.registry import get_phase
from cogumi.runner import PhaseContext, PhaseInputError


def refuse(ctx, task):
    """1B's check of its training prompts against the profile's evaluation suite."""
    refuse_evaluation_items(ctx, ((it.id, prompt_text(it)) for it in task.items), "1B")


def _ctx(tmp_path, **sc_update):
    profile = load_profile("tiny")
    sc = profile.self_consistency.model_copy(update=sc_update)
    profile = profile.model_copy(update={"self_consistency": sc})
    return PhaseContext(profile=profile, phase=get_phase("1B"), out_dir=tmp_path,
                        runs_dir=tmp_path, console=Console(quiet=True))


def test_code_prompts_that_are_the_evaluation_set_are_refused(tmp_path):
    ctx = _ctx(tmp_path, code_prompts="fixtures/benchmarks/code.jsonl")
    with pytest.raises(PhaseInputError, match="58 item.*are evaluation items.*train on the test"):
        refuse(ctx, _code_training_task(ctx))


def test_code_prompts_disjoint_from_the_suite_pass(tmp_path):
    ctx = _ctx(tmp_path, code_prompts="fixtures/benchmarks/code_train.jsonl")
    refuse(ctx, _code_training_task(ctx))  # no raise


def test_humaneval_prompts_refused_when_the_suite_evaluates_humaneval(tmp_path):
    ctx = _ctx(tmp_path, code_prompts="humaneval", code_prompt_limit=None)
    ctx.profile = ctx.profile.model_copy(update={"eval": ctx.profile.eval.model_copy(
        update={"humaneval": "package"})})
    with pytest.raises(PhaseInputError, match="164 item.*humaneval:HumanEval/0"):
        refuse(ctx, _code_training_task(ctx))


def test_humaneval_code_prompts_reduced_and_said_so(tmp_path):
    ctx = _ctx(tmp_path, code_prompts="humaneval", code_prompt_limit=5)
    task = _code_training_task(ctx)
    full = _code_training_task(_ctx(tmp_path, code_prompts="humaneval", code_prompt_limit=None))
    assert len(task.items) == 5 and len(full.items) == 164
    assert task.digest != full.digest  # a reduced task is not the full task
    assert any("5 of 164 code prompts" in n for n in ctx.notes)


def test_curated_records_that_are_evaluation_items_stop_the_phase(tmp_path):
    import json

    from cogumi.phases.common import curated_records

    ctx = _ctx(tmp_path)
    (tmp_path / "0").mkdir()
    math_item = json.loads(open("fixtures/benchmarks/math.jsonl").readline())
    rows = [{"id": "r1", "instruction": "Say hello.", "response": "Hello."}]
    (tmp_path / "0" / "curated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert curated_records(ctx) == rows
    rows.append({"id": "r2", "instruction": math_item["problem"].upper(), "response": "x"})
    (tmp_path / "0" / "curated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PhaseInputError, match=r"curated.jsonl: 1 item.*r2 \(text of math:"):
        curated_records(ctx)
