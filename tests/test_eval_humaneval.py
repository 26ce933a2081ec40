"""The done-criterion of the code benchmark: HumanEval's canonical solutions score 164/164
through the real evaluate() path and sandbox, and deliberately wrong ones score 0."""

from __future__ import annotations

import pytest

from cogumi.evaluation import GenerationSettings, evaluate, load_task
from cogumi.evaluation.testing import ScriptedBackend


@pytest.fixture(scope="module")
def humaneval():
    return load_task("humaneval")


def _answering(humaneval, completion_for):
    by_prompt = {it.fields["prompt"]: it for it in humaneval.items}

    def respond(req, rendered):
        content = req.messages[0]["content"]
        prompt = content.split("```python\n", 1)[1].rsplit("```", 1)[0]
        return completion_for(by_prompt[prompt])

    return ScriptedBackend(respond)


def test_canonical_solutions_score_164_of_164(humaneval):
    backend = _answering(humaneval, lambda it: it.fields["canonical_solution"])
    report = evaluate(backend, [humaneval], GenerationSettings(), workers=2)
    failed = [(r["item_id"], r["reasons"][0], r["details"][0]) for r in report.records
              if r["reasons"] != ["passed"]]
    assert failed == []
    assert report.metrics["humaneval.pass@1"] == 1.0
    assert report.metrics["humaneval.n_items"] == 164


def test_canonical_solutions_as_fenced_full_functions_also_pass(humaneval):
    # What a chat model replies: the whole function in a ```python block.
    def full(it):
        return "Here it is:\n```python\n" + it.fields["prompt"] + it.fields["canonical_solution"] + "```\n"

    report = evaluate(_answering(humaneval, full), [humaneval], GenerationSettings(), limit=40)
    assert report.metrics["humaneval.pass@1"] == 1.0


def test_deliberately_wrong_solutions_score_zero(humaneval):
    # Three kinds of wrong, spread over all 164 problems: a body that returns None, one that
    # raises, and the next problem's (correct, plausible-looking) canonical solution.
    items = humaneval.items

    def wrong(it):
        i = items.index(it)
        return ("    return None\n", "    raise NotImplementedError\n",
                items[(i + 1) % len(items)].fields["canonical_solution"])[i % 3]

    report = evaluate(_answering(humaneval, wrong), [humaneval], GenerationSettings(), workers=2)
    assert report.metrics["humaneval.pass@1"] == 0.0
    # Every failure has a recorded reason from the sandbox's vocabulary.
    assert {r["reasons"][0] for r in report.records} <= {"wrong_answer", "exception", "syntax_error"}


def test_full_function_replaces_a_stub_without_a_docstring():
    # A prompt that is only a signature (no docstring body) must still combine with a
    # completion that repeats the whole function.
    from cogumi.evaluation import Item, Sandbox, build_program

    item = Item("x", "code", None, {"prompt": "import math\n\ndef area(r):\n", "entry_point": "area",
                                    "test": "def check(c):\n    assert abs(c(1) - math.pi) < 1e-9\n"}, 1)
    program = build_program(item, "def area(r):\n  return math.pi * r * r\n")
    assert Sandbox().run(program).reason == "passed"
