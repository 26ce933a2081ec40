"""Phase 1B's choice of code prompts: never the evaluation set; limits are stated."""

import pytest
from rich.console import Console

from cogumi.phases.common import eval_tasks
from cogumi.phases.self_consistency import _code_training_task, refuse_evaluation_items
from cogumi.profile import load_profile
from cogumi.registry import get_phase
from cogumi.runner import PhaseContext, PhaseInputError


def _ctx(tmp_path, **sc_update):
    profile = load_profile("tiny")
    sc = profile.self_consistency.model_copy(update=sc_update)
    profile = profile.model_copy(update={"self_consistency": sc})
    return PhaseContext(profile=profile, phase=get_phase("1B"), out_dir=tmp_path,
                        runs_dir=tmp_path, console=Console(quiet=True))


def test_code_prompts_that_are_the_evaluation_set_are_refused(tmp_path):
    ctx = _ctx(tmp_path, code_prompts="fixtures/benchmarks/code.jsonl")
    with pytest.raises(PhaseInputError, match="58 item.*are evaluation items.*train on the test"):
        refuse_evaluation_items(ctx, [_code_training_task(ctx)], eval_tasks(ctx))


def test_code_prompts_disjoint_from_the_suite_pass(tmp_path):
    ctx = _ctx(tmp_path, code_prompts="fixtures/benchmarks/code_train.jsonl")
    refuse_evaluation_items(ctx, [_code_training_task(ctx)], eval_tasks(ctx))  # no raise


def test_humaneval_prompts_refused_when_the_suite_evaluates_humaneval(tmp_path):
    ctx = _ctx(tmp_path, code_prompts="humaneval", code_prompt_limit=None)
    ctx.profile = ctx.profile.model_copy(update={"eval": ctx.profile.eval.model_copy(
        update={"humaneval": "package"})})
    with pytest.raises(PhaseInputError, match="164 item.*humaneval:HumanEval/0"):
        refuse_evaluation_items(ctx, [_code_training_task(ctx)], eval_tasks(ctx))


def test_humaneval_code_prompts_reduced_and_said_so(tmp_path):
    ctx = _ctx(tmp_path, code_prompts="humaneval", code_prompt_limit=5)
    task = _code_training_task(ctx)
    full = _code_training_task(_ctx(tmp_path, code_prompts="humaneval", code_prompt_limit=None))
    assert len(task.items) == 5 and len(full.items) == 164
    assert task.digest != full.digest  # a reduced task is not the full task
    assert any("5 of 164 code prompts" in n for n in ctx.notes)
